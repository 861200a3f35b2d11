"""The launch-configuration sweep behind ``launch_config`` (triton_kernels/launching.py): tile width x splits, on a GPU.

For K = 4, V = 128256, B in {1, 64, 256}, bfloat16 and float32 logits, sampled and greedy rows, every launch is timed
alone with CUDA graphs (``triton.testing.do_bench_cudagraph``, median): launch 1 (``row_stats``) over BLOCK_V in
{1024, 2048, 4096} and the splits that give {1, 2, 4, 8} programs per SM; launch 2 (``verify_rows``, from the
statistics of launch 1) over BLOCK_V in {512, 1024, 2048} and the same program targets. Warps follow the tile width as
in ``launch_config`` (8 from 2048 up, else 4). Prints one line per point and, per case, the best point next to the
default configuration's time, and writes ``sweep_<gpu>.csv`` under ``--out`` (default ``$OUT``, else bench/out).

    python bench/sweep_config.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench_cudagraph

HERE = Path(__file__).resolve().parent
COLUMNS = ("device", "B", "K", "V", "dtype", "mode", "launch", "block_v", "programs_per_sm", "splits", "median_us",
           "default")


def cases(quick: bool):
    for batch in (1, 64) if quick else (1, 64, 256):
        for dtype in (torch.bfloat16,) if quick else (torch.bfloat16, torch.float32):
            for mode in ("sampled", "greedy"):
                yield batch, 4, 128256, dtype, mode


def inputs(batch, k, vocab, dtype, mode, device):
    g = torch.Generator(device=device).manual_seed(batch)
    target = torch.randn(batch, k + 1, vocab, device=device, generator=g).to(dtype)
    draft = (target[:, :k].float() + 0.5 * torch.randn(batch, k, vocab, device=device, generator=g)).to(dtype)
    tokens = torch.randint(0, vocab, (batch, k), device=device, generator=g)
    seed = torch.arange(batch, device=device, dtype=torch.int64)
    return target, draft, tokens, (0.0 if mode == "greedy" else 1.0), seed


def launcher(kernels, launch, target, draft, tokens, temperature, seed, stats):
    """Launch 1 or 2 alone, as a function of (BLOCK_V, splits); None, None: the default configuration."""
    def run(block_v=None, splits=None):
        if launch == "1":
            return kernels.row_stats(target, draft, None, temperature, block_v, splits)
        return kernels.verify_rows(target, tokens, draft, None, temperature, seed, stats, block_v=block_v,
                                   num_splits=splits)
    return run


def _median_us(fn, rep_ms: float) -> float:
    """Median µs of `fn` as a CUDA graph."""
    return do_bench_cudagraph(fn, rep=rep_ms, return_mode="median") * 1000.0


def splits_for(programs_per_sm: int, rows: int, sms: int) -> int:
    return max(1, triton.cdiv(programs_per_sm * sms, rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="B in {1, 64}, bfloat16 only")
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "out"))
    p.add_argument("--rep-ms", type=float, default=20.0)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sweep_config: needs a CUDA device", file=sys.stderr)
        return 2
    from specsampler import triton_kernels as kernels

    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sweep_{name.lower().replace(' ', '_')}.csv"
    start = time.time()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for batch, k, vocab, dtype, mode in cases(args.quick):
            target, draft, tokens, temperature, seed = inputs(batch, k, vocab, dtype, mode, device)
            label = f"B={batch} {str(dtype)[6:]} {mode}"
            rows1 = batch * (2 * k + 1)
            points = []
            time_it = functools.partial(_median_us, rep_ms=args.rep_ms)
            for launch, widths, rows in (("1", (1024, 2048, 4096), rows1), ("2", (512, 1024, 2048), batch)):
                stats = kernels.row_stats(target, draft, None, temperature)
                run = launcher(kernels, launch, target, draft, tokens, temperature, seed, stats)
                default_us = time_it(run)
                for block_v in widths:
                    for per_sm in (1, 2, 4, 8):
                        s = splits_for(per_sm, rows, sms)
                        us = time_it(functools.partial(run, block_v, s))
                        points.append((us, launch, block_v, per_sm, s))
                        writer.writerow(dict(device=name, B=batch, K=k, V=vocab, dtype=str(dtype)[6:], mode=mode,
                                             launch=launch, block_v=block_v, programs_per_sm=per_sm, splits=s,
                                             median_us=f"{us:.2f}", default=""))
                writer.writerow(dict(device=name, B=batch, K=k, V=vocab, dtype=str(dtype)[6:], mode=mode,
                                     launch=launch, block_v="", programs_per_sm="", splits="",
                                     median_us=f"{default_us:.2f}", default="yes"))
                best = min(pt for pt in points if pt[1] == launch)
                print(f"{label:<24} launch {launch}: default {default_us:8.2f} us | best {best[0]:8.2f} us at "
                      f"BLOCK_V={best[2]}, {best[3]} programs/SM ({best[4]} splits)", flush=True)
            f.flush()
    print(f"sweep: {time.time() - start:.0f}s, {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
