"""The torch backend's warpers against transformers' warper code + verify, per warper setting (CPU, one thread).

For each setting (top-k 50; top-k 50 + top-p 0.9; top-p 0.9) and B in {1, 64}, K = 4, V = 32000, T = 0.7:
``specsampler.verify(target, drafts, draft, temperature=0.7, **warpers, backend="torch")`` against the peer
``specsampler.verify(warp(target), drafts, warp(draft), temperature=1.0, backend="torch")`` where ``warp`` is
transformers' warper code in torch (`warp_peers._torch_chain`: temperature, topk, a full sort for top-p). Medians of
interleaved repeats, the best of three rounds.

    python bench/bench_warp_cpu.py
"""

from __future__ import annotations

import functools
import time

import torch
from warp_peers import _torch_chain

import specsampler

SETTINGS = (dict(top_k=50), dict(top_k=50, top_p=0.9), dict(top_p=0.9))


def _median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2] * 1e6


def _peer(warp, target, drafts, draft):
    return specsampler.verify(warp(target), drafts, warp(draft), temperature=1.0, seed=1, backend="torch")


def main() -> None:
    torch.set_num_threads(1)
    k, vocab, temperature = 4, 32000, 0.7
    print(f"torch backend, one thread, K = {k}, V = {vocab}, T = {temperature}; peer: transformers' warper code "
          "(torch) + verify at T = 1")
    print(f"{'warpers':<22} {'B':>3} {'specsampler':>12} {'peer':>12} {'ratio':>7}")
    for settings in SETTINGS:
        for batch in (1, 64):
            g = torch.Generator().manual_seed(0)
            target = torch.randn(batch, k + 1, vocab, generator=g) * 3
            draft = target[:, :k] + torch.randn(batch, k, vocab, generator=g)
            drafts = torch.distributions.Categorical(logits=draft / temperature).sample()
            warp = _torch_chain(temperature, settings.get("top_k"), settings.get("top_p"))

            ours = functools.partial(specsampler.verify, target, drafts, draft, temperature=temperature, seed=1,
                                     backend="torch", **settings)
            peer = functools.partial(_peer, warp, target, drafts, draft)
            repeats = 30 if batch == 1 else 5
            a, b = [], []
            for _ in range(3):
                a.append(_median_us(ours, repeats))
                b.append(_median_us(peer, repeats))
            name = ", ".join(f"{key} {value}" for key, value in settings.items())
            print(f"{name:<22} {batch:>3} {min(a):>9.0f} us {min(b):>9.0f} us {min(b) / min(a):>6.2f}x")


if __name__ == "__main__":
    main()
