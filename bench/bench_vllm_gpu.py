"""The vLLM plugin's verification call on a GPU, against vLLM's Triton ``rejection_sample`` where vLLM imports.

The inputs are the ones vLLM's ``RejectionSampler.forward`` receives on a step with n-gram speculation: the target's
flattened float32 logits [num_tokens + B, V] (request b's n_b drafted positions, then its bonus position), the draft
token ids [num_tokens], ``cu_num_draft_tokens`` [B], per-request temperatures, ``draft_probs`` None. For B = 1, 8,
32, 64 requests, K = 4 drafts (every request K drafts; and ragged, n_b in [0, K]), V = 151936 (Qwen), greedy and
T = 0.8:

- ``specsampler``: what the plugin's ``forward`` does on that step (no processors to apply), with its own functions
  from ``specsampler.vllm.sampler``: ``_scores_unprocessed`` (the [B, K+1, V] view, or the gather when ragged),
  ``_options``, ``_drafts``, ``row_seeds``, ``_verify`` (one ``specsampler.verify`` call, backend triton), the
  tokens as int32. ``SamplingMetadata`` is a plain stand-in with the fields those functions read (``_options`` reads
  min-p from vLLM's ``MinPLogitsProcessor``; without vLLM its lookup is replaced by "no min-p request", which is
  what it finds here).
- ``vllm``: ``vllm.v1.sample.rejection_sampler.rejection_sample`` on the same step: the drafted rows (gathered and
  divided by the temperature beforehand, as ``forward`` does before the call) and bonus token ids given (the target's
  argmax). Only the call is timed, so vLLM's figure leaves out its row gather, temperature and bonus sampling that the
  plugin's includes.

Checks: every output token in [0, V) or -1, the first position never -1, positions past a request's n_b + 1 all -1;
greedy, the plugin's tokens equal the torch backend's on the same inputs, and vLLM's when vLLM imports. Times are CUDA
events (median of --repeats after --warmup calls; wall time on a CPU). CSV: ``vllm_verify_<gpu>.csv`` under --out.

    python bench/bench_vllm_gpu.py --out bench/out          # on CUDA
    python bench/bench_vllm_gpu.py --dry-run --out /tmp/x    # on a CPU: B = 1, 2, V = 300, one call per case timed
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

COLUMNS = ["device", "B", "K", "V", "drafts", "num_tokens", "mode", "provider", "backend", "median_us", "accepted",
           "valid", "greedy_equal_torch", "greedy_equal_vllm"]
TEMPERATURE = 0.8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--k", type=int, default=4, help="drafts per request (the ragged case: 0 to K)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--backend", default=None, help="specsampler's backend (default triton; torch in a dry run "
                                                    "without TRITON_INTERPRET=1 or CUDA)")
    p.add_argument("--budget-seconds", type=float, default=60.0, help="no new case starts after this")
    p.add_argument("--out", default="bench/out")
    p.add_argument("--dry-run", action="store_true", help="CPU, B = 1, 2, V = 300, 1 warm-up, 1 repeat")
    args = p.parse_args(argv)
    if args.dry_run:
        args.batch, args.vocab, args.warmup, args.repeats = [1, 2], 300, 1, 1
    if args.backend is None:
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        args.backend = "triton" if torch.cuda.is_available() or interpret else "torch"
    return args


def vllm_rejection_sample():
    """vLLM's ``rejection_sample``, or None where vLLM does not import."""
    try:
        from vllm.v1.sample.rejection_sampler import rejection_sample
    except Exception as exc:  # noqa: BLE001 (any import failure: not importable here)
        print(f"vLLM not importable here: only specsampler timed ({type(exc).__name__}: {exc})")
        return None
    import vllm

    print(f"vLLM {vllm.__version__}: rejection_sample from {sys.modules[rejection_sample.__module__].__file__}")
    return rejection_sample


def make_step(batch, k, vocab, ragged, greedy, device, seed):
    """One step's inputs as vLLM hands them to ``RejectionSampler.forward`` (n-gram: draft_probs None)."""
    g = torch.Generator().manual_seed(seed)
    counts = [k] * batch
    if ragged:  # n_b in [0, K], the largest K (vLLM pads to it); one request alone: 1 to K - 1 drafts
        counts = torch.randint(0, k + 1, (batch,), generator=g).tolist()
        counts[0] = k if batch > 1 else int(torch.randint(1, max(k, 2), (1,), generator=g))
    logits = (torch.randn(sum(counts) + batch, vocab, generator=g) * 4).to(device)
    n = torch.tensor(counts)
    starts = torch.cumsum(n + 1, 0) - (n + 1)
    target_idx = torch.cat([starts[b] + torch.arange(counts[b]) for b in range(batch)]).to(torch.int64)
    bonus_idx = starts + n
    argmax = logits.argmax(-1).cpu()
    guess = torch.where(torch.rand(len(target_idx), generator=g) < 0.7, argmax[target_idx],
                        torch.randint(0, vocab, (len(target_idx),), generator=g))  # ~70% the target's argmax
    temperature = torch.full((batch,), 0.0 if greedy else TEMPERATURE, device=device)
    sm = SimpleNamespace(all_greedy=greedy, all_random=not greedy, temperature=temperature, top_k=None, top_p=None,
                         generators={}, logitsprocs=SimpleNamespace(argmax_invariant=[]))
    return SimpleNamespace(counts=counts, k=max(counts), logits=logits, draft_ids=guess.to(device, torch.int32),
                           cu=torch.cumsum(n, 0).to(device, torch.int32), sm=sm, target_idx=target_idx.to(device),
                           bonus_idx=bonus_idx.to(device))


def plugin_call(step, backend):
    """The plugin's ``forward`` on a step with nothing to apply before sampling, by its own functions."""
    from specsampler.vllm import sampler

    batch = len(step.counts)
    scores = sampler._scores_unprocessed(step.logits, step.counts, step.k)
    options = sampler._options(step.sm, batch)
    drafts = sampler._drafts(step.draft_ids.to(torch.int64), step.counts, step.k)
    seeds = sampler.row_seeds(step.sm.generators, batch, step.logits.device)
    result = sampler._verify(scores, drafts, None, step.counts, step.k, options, seeds,
                             {"method": "token", "backend": backend})
    return result.tokens.to(device=step.logits.device, dtype=torch.int32)


def vllm_inputs(step):
    """What ``forward`` passes to ``rejection_sample`` (computed outside the timing)."""
    target = step.logits[step.target_idx].float()
    if not step.sm.all_greedy:
        per_token = torch.repeat_interleave(step.sm.temperature, torch.tensor(step.counts, device=target.device))
        target = target / per_token[:, None]
    bonus = step.logits[step.bonus_idx].argmax(-1).to(torch.int32)[:, None].contiguous()
    return (step.draft_ids.contiguous(), step.counts, step.k, step.cu, None, target, bonus, step.sm)


def timed(fn, device, warmup, repeats):
    """(median us, last result): CUDA events on CUDA, wall time elsewhere."""
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times), out


def valid(tokens, counts, vocab):
    """Token ids in [0, V) or -1; position 0 emitted; past request b's n_b + 1 positions only -1."""
    tokens = tokens.cpu().long()
    if tokens.shape[0] != len(counts) or tokens.shape[1] < max(counts) + 1:
        return False
    inside = (tokens == -1) | ((tokens >= 0) & (tokens < vocab))
    past = torch.arange(tokens.shape[1])[None, :] > torch.tensor(counts)[:, None]
    return bool(inside.all() and (tokens[:, 0] >= 0).all() and (tokens[past] == -1).all())


def accepted(tokens, counts):
    """Mean accepted drafts per request (emitted tokens minus the one correction or bonus)."""
    emitted = (tokens.cpu()[:, : max(counts) + 1] >= 0).sum(-1).double() - 1
    return float(emitted.mean())


def run_case(args, device, step, mode, drafts, reject):
    """The rows of one case: specsampler (and vLLM where it imports), timed and checked."""
    batch, vocab = len(step.counts), args.vocab
    us, ours = timed(lambda: plugin_call(step, args.backend), device, args.warmup, args.repeats)
    base = dict(device=device.type if device.type == "cpu" else torch.cuda.get_device_name().lower().replace(" ", "_"),
                B=batch, K=step.k, V=vocab, drafts=drafts, num_tokens=sum(step.counts), mode=mode)
    row = dict(base, provider="specsampler", backend=args.backend, median_us=round(us, 2),
               accepted=round(accepted(ours, step.counts), 3), valid=valid(ours, step.counts, vocab),
               greedy_equal_torch="", greedy_equal_vllm="")
    if mode == "greedy" and args.backend != "torch":
        row["greedy_equal_torch"] = bool(plugin_call(step, "torch").cpu().equal(ours.cpu()))
    rows = [row]
    if reject is not None:
        rows.append(vllm_row(args, device, step, mode, reject, base, row, ours))
    return rows


def vllm_row(args, device, step, mode, reject, base, ours_row, ours):
    """vLLM's ``rejection_sample`` on the step, timed and checked (greedy: its tokens against the plugin's)."""
    inputs = vllm_inputs(step)
    us, theirs = timed(lambda: reject(*inputs), device, args.warmup, args.repeats)
    if mode == "greedy":
        ours_row["greedy_equal_vllm"] = bool(theirs.cpu().equal(ours.cpu()))
    return dict(base, provider="vllm", backend="triton", median_us=round(us, 2),
                accepted=round(accepted(theirs, step.counts), 3), valid=valid(theirs, step.counts, args.vocab),
                greedy_equal_torch="", greedy_equal_vllm="")


def failures(rows):
    """The rows whose checks failed (invalid tokens, or greedy tokens that differ)."""
    return [r for r in rows if r["valid"] is not True or False in (r["greedy_equal_torch"], r["greedy_equal_vllm"])]


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    print(f"vLLM's verification step on {device} (specsampler backend {args.backend}): B = {args.batch}, K = {args.k},"
          f" V = {args.vocab}, float32 logits, draft_probs None (n-gram)")
    reject = vllm_rejection_sample()
    if reject is None:  # _options reads min-p from vLLM's processor; no request here sets one
        from specsampler.vllm import sampler

        mock.patch.object(sampler, "min_p_values", lambda sm, batch: None).start()
    start, rows, seed = time.perf_counter(), [], 0
    print(f"{'B':>3} {'drafts':>7} {'tokens':>6} {'mode':>6} {'provider':>11} {'us':>10} {'accepted':>8} valid equal")
    for batch in args.batch:
        for drafts in ("uniform", "ragged"):
            for mode in ("greedy", f"T={TEMPERATURE}"):
                if time.perf_counter() - start > args.budget_seconds:
                    print(f"budget of {args.budget_seconds:.0f}s spent: B = {batch} {drafts} {mode} and later left out")
                    return finish(args, rows)
                seed += 1
                step = make_step(batch, args.k, args.vocab, drafts == "ragged", mode == "greedy", device, seed)
                try:
                    case = run_case(args, device, step, mode, drafts, reject)
                except Exception as exc:  # noqa: BLE001 (vLLM's call failing here: say so, time ours alone)
                    if reject is None:
                        raise
                    print(f"NOTE: vLLM's rejection_sample failed here, only specsampler timed from now: "
                          f"{type(exc).__name__}: {str(exc)[:300]}")
                    reject = None
                    case = run_case(args, device, step, mode, drafts, reject)
                for r in case:
                    rows.append(r)
                    equal = "/".join(str(r[c]) for c in ("greedy_equal_torch", "greedy_equal_vllm") if r[c] != "")
                    print(f"{batch:>3} {drafts:>7} {r['num_tokens']:>6} {mode:>6} {r['provider']:>11} "
                          f"{r['median_us']:>10.1f} {r['accepted']:>8.2f} {str(r['valid']):>5} {equal}")
    return finish(args, rows)


def finish(args, rows):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"vllm_verify_{rows[0]['device'] if rows else 'none'}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    bad = failures(rows)
    print(f"csv: {path}; {len(rows)} rows, {len(bad)} failed checks" + ("" if rows else "; NO CASE RAN"))
    for r in bad:
        print(f"FAILED: {r}")
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
