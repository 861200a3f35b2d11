"""The greedy rejection step before and after the CPU argmax change (torch_backend._argmax), beside vLLM's own, in one
process on the same inputs (bench_vllm's step inputs: K = 4 drafts all accepted, V = 49152), calls interleaved,
median of --repeats timed calls each. "before" is the plugin with the previous _argmax (a scrubbing copy, then torch's
argmax) put back for its calls. Run as bench_vllm.py is run (same venv, same environment variables)."""

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_vllm import CONVERT, _machine, _step_inputs, build_engines  # noqa: E402


def old_argmax(scores):
    return torch.nan_to_num(scores.float(), nan=float("-inf")).argmax(dim=-1)


def main(repeats=30):
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    from specsampler import torch_backend
    from specsampler.vllm import patch, sampler

    print(_machine())
    model = subprocess.run([sys.executable, "-c", CONVERT], check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    build_engines(model, False)  # (vLLM's CPU rejection kernels are found once an engine exists)
    patch.uninstall()
    vllm_forward = RejectionSampler.forward
    patch.install()
    rs = RejectionSampler(Sampler())
    new_argmax = torch_backend._argmax
    for batch in (1, 32):
        meta, logits, sm = _step_inputs(batch, 4, 49152, True)
        times = {"vllm": [], "before": [], "after": []}
        outs = {}
        for i in range(repeats + 2):
            for side in times:
                fn = vllm_forward if side == "vllm" else sampler.forward
                torch_backend._argmax = old_argmax if side == "before" else new_argmax
                x = logits.clone()
                start = time.perf_counter()
                out = fn(rs, meta, None, x, sm)
                if i >= 2:
                    times[side].append(time.perf_counter() - start)
                outs[side] = out.sampled_token_ids
        torch_backend._argmax = new_argmax
        assert torch.equal(outs["before"], outs["after"]) and torch.equal(outs["vllm"], outs["after"])
        for side, t in times.items():
            print(f"step greedy B={batch:2d} {side:6s} median {1e3 * statistics.median(t):8.2f} ms "
                  f"(min {1e3 * min(t):.2f}, max {1e3 * max(t):.2f}, {len(t)} calls)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
