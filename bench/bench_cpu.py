"""CPU microbenchmark: specsampler.verify (torch backend) against transformers' `_speculative_sampling`.

Same inputs for both: target logits [B, K+1, V] ~ 3 * N(0, 1), draft logits = target + sigma * N(0, 1) (sigma sets the
acceptance rate; sigma = 0 is p = q, every draft accepted: the most work for both, as the torch backend computes the
softmax of a position only when the drafts before it were accepted), drafts sampled from the draft.
transformers' function takes one row at a time, so a batch of B costs B calls of it; ours takes the batch in one call.
Each call gets the next inputs of a pool of 64 rows (so that the acceptance varies from call to call, as in
generation), read once just before the timer starts (a model's fresh logits are in cache). Times are medians of
interleaved repeats (the two providers alternate, so drift on a shared machine hits both), on one thread.

Then the warped case (``warp_peers.py``): temperature 0.7, top_k 50, top_p 0.9, float32, K = 4, at B = 1 and 64
(--quick: 1 and 8): ``specsampler.verify`` with the warpers inside (torch backend) against transformers' warpers
(``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``) on both logit tensors followed by
``specsampler.verify`` at temperature 1; and ``specsampler.sample`` against those warpers, a softmax and
``torch.multinomial``. Its rows start with ``verify`` or ``sample``.

Then block against token verification (``method="block"`` / ``"token"``, torch backend, float32, K = 4, V = 32000) at
B = 1 and 64 over the same sigmas, timed side by side, with each method's mean accepted drafts per row.

    python bench/bench_cpu.py            # the tables
    python bench/bench_cpu.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import inspect
import platform
import time

import torch

import specsampler

POOL = 64


def hf_verify():
    """transformers' verify step, called as its assisted generation calls it (one row, full logits)."""
    import transformers
    from transformers.generation.utils import _speculative_sampling

    takes_done_flag = "is_done_candidate" in inspect.signature(_speculative_sampling).parameters

    def call(drafts, draft_logits, target_logits):
        k = drafts.shape[1]
        if takes_done_flag:
            return _speculative_sampling(drafts, draft_logits, k, target_logits, False)
        return _speculative_sampling(drafts, draft_logits, k, target_logits)

    return call, transformers.__version__


def make_inputs(batch, k, vocab, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = 3.0 * torch.randn(batch, k + 1, vocab, generator=g)
    draft = target[:, :k] + sigma * torch.randn(batch, k, vocab, generator=g)
    drafts = torch.multinomial(draft.softmax(-1).reshape(-1, vocab), 1, generator=g).reshape(batch, k)
    return target, drafts, draft


def interleaved_medians(providers, inputs, repeats):
    """Median seconds of each provider, timed in alternation; each call gets the next inputs, read once just before
    the timer starts (as a model's fresh logits are: in cache, written a moment before)."""
    times = [[] for _ in providers]
    for step in range(repeats + 1):
        for fn, ts in zip(providers, times, strict=True):
            args = inputs[step % len(inputs)]
            for a in args:
                if isinstance(a, torch.Tensor):
                    a.sum()
            start = time.perf_counter()
            fn(*args)
            if step:  # the first round warms up
                ts.append(time.perf_counter() - start)
    return [sorted(ts)[len(ts) // 2] for ts in times]


def time_case(hf, batch, k, vocab, sigma, repeats):
    """(mean accepted, transformers seconds, specsampler seconds) for one case.

    POOL rows of inputs; each call takes the next batch of them, so that at B = 1 the acceptance varies from call to
    call as in generation. Both providers see the same sequence of inputs.
    """
    target, drafts, draft = make_inputs(max(batch, POOL), k, vocab, sigma)
    inputs = [(target[lo : lo + batch], drafts[lo : lo + batch], draft[lo : lo + batch])
              for lo in range(0, target.shape[0] - batch + 1, batch)]

    def ours(t, x, d):
        specsampler.verify(t, x, d, seed=0, backend="torch")

    def theirs(t, x, d):
        for b in range(t.shape[0]):
            hf(x[b : b + 1], d[b : b + 1], t[b : b + 1])

    t_hf, t_ours = interleaved_medians([theirs, ours], inputs, repeats)
    accepted = specsampler.verify(target, drafts, draft, seed=0, backend="torch").num_accepted.float().mean()
    return float(accepted), t_hf, t_ours


def run(cases, repeats):
    """Print the table; returns its rows (B, K, V, sigma, mean accepted, transformers s, specsampler s)."""
    hf, hf_version = hf_verify()
    print(f"specsampler {specsampler.__version__} (torch backend) vs transformers {hf_version} _speculative_sampling")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads=1, "
          f"median of {repeats} interleaved repeats (B = 1), {max(5, repeats // 10)} (B > 1)\n")
    header = (f"{'B':>4} {'K':>3} {'V':>7} {'sigma':>6} {'accepted':>9} {'transformers':>14} {'specsampler':>13} "
              f"{'ratio':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for batch, k, vocab, sigma in cases:
        accepted, t_hf, t_ours = time_case(hf, batch, k, vocab, sigma, repeats if batch == 1 else max(5, repeats // 10))
        rows.append((batch, k, vocab, sigma, accepted, t_hf, t_ours))
        print(f"{batch:>4} {k:>3} {vocab:>7} {sigma:>6.2f} {accepted:>9.2f} {t_hf * 1e6:>11.0f} us "
              f"{t_ours * 1e6:>10.0f} us {t_hf / t_ours:>6.2f}x")
    return rows


def run_warped(batches, k, vocab, repeats):
    """Print the warped table (see the module docstring); returns its rows (what, B, K, V, specsampler s, peer s).

    Both providers of a row get the same inputs (a pool of 64 rows, the next batch each call, as in :func:`time_case`)
    and are timed in alternation; B = 1 gets `repeats` repeats, larger B max(5, repeats // 10)."""
    from warp_peers import SAMPLE_PEER, VERIFY_PEER, WARP, sample_fns, torch_warpers, verify_fns, warped_inputs

    warp, where = torch_warpers(**WARP)
    print(f"\nwarped: temperature {WARP['temperature']}, top_k {WARP['top_k']}, top_p {WARP['top_p']}, float32, "
          f"K = {k}, V = {vocab}; peer: {where} warpers (sort for top-p), then specsampler.verify at temperature 1 "
          f"(torch backend), or a softmax and torch.multinomial\n")
    header = f"{'what':<7} {'B':>4} {'K':>3} {'V':>7} {'specsampler':>13} {'peer':>13} {'ratio':>7}  peer"
    print(header)
    print("-" * len(header))
    rows = []
    for batch in batches:
        pool = warped_inputs(max(batch, POOL), k, vocab, torch.device("cpu"), seed=batch, warp=warp)
        chunks = [{name: x[lo : lo + batch] for name, x in pool.items()}
                  for lo in range(0, pool["target"].shape[0] - batch + 1, batch)]
        reps = repeats if batch == 1 else max(5, repeats // 10)
        for what, fns, peer in (("verify", verify_fns, VERIFY_PEER), ("sample", sample_fns, SAMPLE_PEER)):
            calls = [fns(chunk, "torch", warp) for chunk in chunks]
            providers = [lambda i, *tensors, name=name, calls=calls: calls[i][name]() for name in ("specsampler", peer)]
            inputs = [(i, *chunk.values()) for i, chunk in enumerate(chunks)]  # the tensors are read before timing
            t_ours, t_peer = interleaved_medians(providers, inputs, reps)
            rows.append((what, batch, k, vocab, t_ours, t_peer))
            print(f"{what:<7} {batch:>4} {k:>3} {vocab:>7} {t_ours * 1e6:>10.0f} us {t_peer * 1e6:>10.0f} us "
                  f"{t_peer / t_ours:>6.2f}x  {peer}")
    return rows


def run_methods(cases, repeats):
    """Print block against token verification; returns its rows (B, K, V, sigma, token accepted, block accepted,
    token s, block s)."""
    print("\nblock vs token verification (torch backend, one thread, same inputs and seeds, timed in alternation)\n")
    header = (f"{'B':>4} {'K':>3} {'V':>7} {'sigma':>6} {'acc token':>10} {'acc block':>10} {'token':>11} "
              f"{'block':>11} {'block/token':>12}")
    print(header)
    print("-" * len(header))
    rows = []
    for batch, k, vocab, sigma in cases:
        target, drafts, draft = make_inputs(max(batch, POOL), k, vocab, sigma)
        inputs = [(target[lo : lo + batch], drafts[lo : lo + batch], draft[lo : lo + batch])
                  for lo in range(0, target.shape[0] - batch + 1, batch)]
        providers = [lambda t, x, d, m=m: specsampler.verify(t, x, d, seed=0, backend="torch", method=m)
                     for m in ("token", "block")]
        t_token, t_block = interleaved_medians(providers, inputs, repeats if batch == 1 else max(5, repeats // 10))
        accepted = [float(specsampler.verify(target, drafts, draft, seed=0, backend="torch", method=m)
                          .num_accepted.float().mean()) for m in ("token", "block")]
        rows.append((batch, k, vocab, sigma, *accepted, t_token, t_block))
        print(f"{batch:>4} {k:>3} {vocab:>7} {sigma:>6.2f} {accepted[0]:>10.2f} {accepted[1]:>10.2f} "
              f"{t_token * 1e6:>8.0f} us {t_block * 1e6:>8.0f} us {t_block / t_token:>11.2f}x")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [(batch, 4, 32000, sigma) for batch in (1, 64) for sigma in (1.0, 0.5, 0.0)]
    repeats = 40 if args.quick else 200
    run(cases, repeats=repeats)
    run_warped((1, 64), 4, 32000, repeats)
    run_methods(cases, repeats)


if __name__ == "__main__":
    main()
