"""The warped case of the benchmarks: specsampler's own warpers against torch's, on identical inputs.

Settings: temperature 0.7, top_k 50, top_p 0.9 (:data:`WARP`), float32 logits. Two comparisons, each a set of
no-argument callables:

- verify (:func:`verify_fns`): ``specsampler.verify(target, drafts, draft, temperature=0.7, top_k=50, top_p=0.9)``
  (the warpers applied inside verify: no sort of the vocabulary in the Triton kernel; the torch backend takes topk)
  against ``warpers+verify``: the torch warpers (:func:`torch_warpers`) applied to the target's and the draft's
  logits, then ``specsampler.verify`` at temperature 1 on the warped scores (what a caller without specsampler's
  warpers runs: the peer pays for a sort of every row for top-p);
- sample (:func:`sample_fns`): ``specsampler.sample(logits, temperature=0.7, top_k=50, top_p=0.9)`` against
  ``warpers+multinomial``: the torch warpers, a softmax and ``torch.multinomial`` (transformers' sampling step).

The torch warpers are transformers' own ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper``,
chained in the order its ``generate`` applies them, when transformers imports; otherwise the same code written in
torch (temperature, ``topk``, then a full sort, softmax and cumulative sum for top-p).

Used by ``bench_cpu.py`` (the CPU table of ``specsampler bench``) and by ``bench_verify_gpu.py`` (the device check).
"""

from __future__ import annotations

import torch

WARP = dict(temperature=0.7, top_k=50, top_p=0.9)
VERIFY_PEER = "warpers+verify"
SAMPLE_PEER = "warpers+multinomial"


def torch_warpers(temperature: float, top_k: int | None, top_p: float | None):
    """The peer's warpers: [N, V] float32 logits -> [N, V] warped logits (masked ones -inf), and where they come from.

    Returns
    -------
    (callable, str)
        The warper chain, and ``"transformers <version>"`` or ``"torch"`` (transformers does not import).
    """
    try:
        import transformers
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    except Exception:  # not installed, or broken: the same code in torch
        return _torch_chain(temperature, top_k, top_p), "torch"
    procs = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    procs += [TopKLogitsWarper(top_k)] if top_k else []
    procs += [TopPLogitsWarper(top_p)] if top_p is not None and top_p < 1.0 else []

    def warp(x: torch.Tensor) -> torch.Tensor:
        for proc in procs:
            x = proc(None, x)
        return x

    return warp, f"transformers {transformers.__version__}"


def _torch_chain(temperature: float, top_k: int | None, top_p: float | None):
    """transformers' warper code, in torch: temperature, top-k (ties with the k-th kept), top-p (sorted ascending,
    the tokens whose cumulative probability stays <= 1 - top_p removed, the largest always kept)."""
    def warp(x: torch.Tensor) -> torch.Tensor:
        if temperature != 1.0:
            x = x / temperature
        if top_k:
            k = min(int(top_k), x.shape[-1])
            x = x.masked_fill(x < torch.topk(x, k)[0][..., -1:], float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(x, descending=False)
            remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
            remove[..., -1:] = False
            x = x.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))
        return x

    return warp


def warped_inputs(batch: int, k: int, vocab: int, device: torch.device, seed: int, warp) -> dict:
    """Fresh float32 inputs for both comparisons.

    Returns
    -------
    dict
        ``target`` [B, K+1, V] and ``draft`` [B, K, V] logits (the draft near the target, so that drafts are often
        accepted), ``drafts`` [B, K] int64 drawn from the warped draft, ``logits`` [B, V] (the draft's first row: what
        a drafter samples from), ``seed`` [B] int64 per-row seeds (no host synchronisation).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    target = torch.randn(batch, k + 1, vocab, device=device, generator=g).mul_(2.0)
    draft = torch.randn(batch, k, vocab, device=device, generator=g).mul_(0.7).add_(target[:, :k])
    probs = warp(draft.reshape(batch * k, vocab)).softmax(dim=-1)
    drafts = torch.multinomial(probs, 1, generator=g).reshape(batch, k)
    seeds = torch.randint(0, 2**62, (batch,), device=device, dtype=torch.int64, generator=g)
    return dict(target=target, draft=draft, drafts=drafts, logits=draft[:, 0].contiguous(), seed=seeds)


def verify_fns(inputs: dict, backend: str, warp) -> dict:
    """{provider: callable} of the warped verification: ``specsampler`` (verify on `backend`, warpers inside) and
    :data:`VERIFY_PEER` (`warp` on both logit tensors, then verify on `backend` at temperature 1)."""
    import specsampler

    target, draft, drafts, seed = inputs["target"], inputs["draft"], inputs["drafts"], inputs["seed"]
    vocab = target.shape[-1]

    def peer():
        warped_t = warp(target.reshape(-1, vocab)).reshape(target.shape)
        warped_d = warp(draft.reshape(-1, vocab)).reshape(draft.shape)
        return specsampler.verify(warped_t, drafts, warped_d, temperature=1.0, seed=seed, backend=backend)

    return {"specsampler": lambda: specsampler.verify(target, drafts, draft, seed=seed, backend=backend, **WARP),
            VERIFY_PEER: peer}


def sample_fns(inputs: dict, backend: str, warp) -> dict:
    """{provider: callable} of one draw per row: ``specsampler`` (sample on `backend`) and :data:`SAMPLE_PEER`
    (`warp`, softmax, ``torch.multinomial``)."""
    import specsampler

    logits, seed = inputs["logits"], inputs["seed"]
    return {"specsampler": lambda: specsampler.sample(logits, seed=seed, backend=backend, **WARP),
            SAMPLE_PEER: lambda: torch.multinomial(warp(logits).softmax(dim=-1), 1)[:, 0]}
