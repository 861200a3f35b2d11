"""The expected accepted length of each tree rule on the trees generation drafts (issue #30): a paired, low-variance
companion of bench_traversal.py's counts.

generate runs with the token rule on the synthetic pair ((3, 2, 1, 1) trees, sampled); at every verify_tree call, for
every row, the expected number of accepted nodes given that tree is computed exactly (float64, the rules' own
recursions: the token rule top-down, traversal's tests in post-order with their weights; specsampler._tree_reference,
the reference tests/test_traversal.py checks the rules against) for both rules, on the same tree. Means over all
calls and rows; tokens per forward = 1 + E[accepted].

    python bench/bench_traversal_exact.py --out bench/results/traversal_cpu-2026-12-07/exact.csv
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
from specsampler._tree_reference import token_expected_depth, traversal_expected_depth  # noqa: E402
from specsampler._validation import warp_options as _warp  # noqa: E402
from specsampler.generation import tree_loop  # noqa: E402
from specsampler.torch_backend import warp_scores  # noqa: E402


def probs(scores, warp_kw):
    t = warp_kw["temperature"]
    warp = _warp(warp_kw.get("top_k"), warp_kw.get("top_p"), None, t, scores.shape[0], scores.device)
    s = scores.float() if warp is None else warp_scores(scores.float(), t, warp, host=False)
    return (s.double() / t).softmax(-1)


def _spy(real, warp_kw, sums):
    """verify_tree, adding each row's exact expectations under both rules to `sums` first."""

    def spy(logits, tokens, parents, dscores, *a, **kw):
        wor = kw.get("draft_sampling") == "without_replacement"
        pp, qq = probs(logits, warp_kw), probs(dscores, warp_kw)
        nn = kw["num_nodes"].tolist()
        for b in range(logits.shape[0]):
            tok, par = tokens[b, :nn[b]].tolist(), parents[b, :nn[b]].tolist()
            sums["token"] += token_expected_depth(pp[b], qq[b], tok, par, wor)
            sums["traversal"] += traversal_expected_depth(pp[b], qq[b], tok, par, wor)
            sums["trees"] += 1
        return real(logits, tokens, parents, dscores, *a, **kw)

    return spy


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--late-scale", type=float, default=0.02)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    margs = argparse.Namespace(vocab=8192, hidden=768, heads=12, layers=12, draft_layers=1, head_scale=4.0,
                               late_scale=args.late_scale, device="cpu", dtype=torch.float32)
    target, draft = build_models(margs)
    ids, mask = make_prompts(args.prompts, margs.vocab, 16, 48)
    warps = {"T=1": dict(temperature=1.0, top_k=None), "T=0.7,top_p=0.9": dict(temperature=0.7, top_p=0.9,
                                                                                 top_k=None)}
    real, rows = tree_loop.verify_tree, []
    for wname, warp_kw in warps.items():
        for sampling in ("iid", "without_replacement"):
            sums = {"token": 0.0, "traversal": 0.0, "trees": 0}
            spy = _spy(real, warp_kw, sums)
            tree_loop.verify_tree = spy
            try:
                with torch.no_grad():
                    specsampler.generate(target, draft, ids, mask, max_new_tokens=args.new_tokens, do_sample=True,
                                         seed=100, draft_tree=(3, 2, 1, 1), draft_tree_sampling=sampling,
                                         eos_token_id=[], pad_token_id=0, **warp_kw)
            finally:
                tree_loop.verify_tree = real
            for method in ("token", "traversal"):
                rows.append(dict(late_scale=args.late_scale, sampling_options=wname, candidates=sampling,
                                 method=method, trees=sums["trees"],
                                 tokens_per_forward=round(1 + sums[method] / sums["trees"], 4)))
                print(rows[-1], flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
