"""Tokens per target forward of token-tree verification rules on the benchmark's synthetic pair (issue #30):
token vs traversal verification, i.i.d. vs without-replacement candidates, sampled, a (3, 2, 1, 1) tree.

    python bench/bench_traversal.py --out bench/results/traversal_cpu-2026-12-07/results.csv

Every configuration runs the same prompts with the same seeds (B = 1: each prompt alone; B = 8: batches of 8); the
tokens per target forward are summed over the runs: (accepted drafts + row steps) / row steps, a row's 1 + mean
accepted per target forward, not cut by max_new_tokens at the last step. No timing: a count.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_generate import build_models, make_prompts  # noqa: E402

import specsampler  # noqa: E402

CONFIGS = [("token", "iid"), ("traversal", "iid"), ("token", "without_replacement"),
           ("traversal", "without_replacement")]


def run(target, draft, ids, mask, batch, method, sampling, warp, new_tokens, seed):
    tokens = steps = accepted = 0
    for start in range(0, ids.shape[0], batch):
        out = specsampler.generate(target, draft, ids[start:start + batch], mask[start:start + batch],
                                   max_new_tokens=new_tokens, do_sample=True, seed=seed + start,
                                   draft_tree=(3, 2, 1, 1), draft_tree_sampling=sampling, verify_method=method,
                                   eos_token_id=[], pad_token_id=0, **warp)
        tokens += out.stats.new_tokens
        steps += out.stats.row_steps
        accepted += out.stats.accepted
    return tokens, steps, accepted


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--late-scale", type=float, default=0.02,
                   help="bench_generate's --late-scale (default 0.02, its default; larger: less agreement)")
    p.add_argument("--configs", nargs="+", default=[f"{m}:{c}" for m, c in CONFIGS],
                   help="method:candidates pairs (candidates: top, iid or without_replacement)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    margs = argparse.Namespace(vocab=8192, hidden=768, heads=12, layers=12, draft_layers=1, head_scale=4.0,
                               late_scale=args.late_scale, device="cpu", dtype=torch.float32)
    target, draft = build_models(margs)
    ids, mask = make_prompts(args.prompts, margs.vocab, 16, 48)
    rows = []
    warps = {"T=1": dict(temperature=1.0, top_k=None), "T=0.7,top_p=0.9": dict(temperature=0.7, top_p=0.9,
                                                                                 top_k=None)}
    with torch.no_grad():
        for wname, warp in warps.items():
            for batch in args.batches:
                for method, sampling in (c.split(":") for c in args.configs):
                    tokens, steps, accepted = run(target, draft, ids, mask, batch, method, sampling, warp,
                                                  args.new_tokens, seed=100)
                    rows.append(dict(late_scale=args.late_scale, sampling_options=wname, batch=batch, method=method,
                                     candidates=sampling,
                                     new_tokens=tokens, row_steps=steps, accepted=accepted,
                                     tokens_per_forward=round((accepted + steps) / steps, 4)))
                    print(rows[-1], flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
