"""Launch 1, ``_row_stats_kernel`` (from logits only): the split statistics of every target and draft row a decision
needs, one pass over each.

Grid (rows, S1): program (row, split) walks one split of one target or draft row in BLOCK_V tiles (whole tiles without
a mask, so aligned rows load in 128-bit vectors, then the row's partial tile). Every lane of the tile keeps its own
accumulators across all the tiles it visits, and the program reduces across lanes once, after its loop: no block
reduction (no barrier) inside the vocabulary loop.
- Sampled rows: the lane's running max m and sum z of exp((l - m) / T), with one exp per element:
  e = exp((min(l, m) - max(l, m)) / T); z = z * e + 1 when l is a new max, z + e otherwise (online softmax).
- Greedy rows: the lane's running max and its lowest id (strictly greater wins, so a lane keeps its first id); no
  exponential at all. Launch 2 needs only the argmax there.
The program writes its split's max and, in the second plane, the sum (sampled) or the argmax (greedy, int32 bits).
When the emitted tokens' log-probabilities are asked for (LOGPROBS), greedy rows also keep the online sums at T = 1
beside their argmax, in the same pass (the log-probabilities need softmax at T = 1 there), and store the argmax in a
third plane. Rows no decision can reach (t > K_b; draft rows of greedy rows) are skipped, and with a float
temperature of 0 the grid holds no draft rows at all. NaN is read as -inf and +inf as the largest float32; padding
lanes load -inf; so no padding lane ever wins, and a row that is all -inf has max -inf and sum 0: probability 0
everywhere. Split 0 of each row's first target row also sets the row's output tokens to -1 (no fill launch of its
own).

With the warpers and many rows over few splits (candidates at most V / 8), sampled rows also keep each lane's 4
largest logits, and the largest 4th of them per split: every logit left out is at most that bound. The cut launch
(``cut_kernel``) searches those candidates first.

Bytes, with s the element size of the scores and S1 the splits: reads each needed logit once, at most
B*(K+1)*V*s + B*K*Vd*s (block verification reads the same: it needs no more statistics); writes 8 * rows * S1 (12
with candidates or LOGPROBS), 8 * B*(K+1) of -1 tokens, and with candidates 16 * S1 * BLOCK_V bytes a sampled row.

References: Milakov and Gimelshein 2018 (online softmax, arXiv 1805.02867); Triton's tutorial 02-fused-softmax;
vLLM's fix for padding lanes winning a tie (GHSA-8wr5-jm2h-8r4f).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launching
from .jit_helpers import (
    FLOAT32_MAX,
    INT32_MAX,
    _finite_logits,
    _load_tile,
    _num_drafts,
    _row_position,
    _scaled_temperature,
    _tile_range,
    gdc_launch_dependents,
)

FILL_BLOCK = tl.constexpr(16)  # token positions set to -1 per store


@triton.jit
def _split_argmax(row_ptr, stride_v, tile_lo, tiles, n, BLOCK_V: tl.constexpr):
    """(max, lowest id of the max) over a split: per-lane running max and id, one reduction after the loop."""
    lanes = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], -float("inf"), tl.float32)
    arg = (tile_lo * BLOCK_V + lanes).to(tl.int32)
    for masked in tl.static_range(2):
        first, last = _tile_range(tile_lo, tiles, n, masked, BLOCK_V)
        for tile in range(first, last):
            offs = tile * BLOCK_V + lanes
            x = _load_tile(row_ptr, stride_v, offs, n, masked).to(tl.float32)
            new = x > m  # NaN never wins; a later equal value never replaces a lane's first id
            m = tl.where(new, x, m)
            arg = tl.where(new, offs.to(tl.int32), arg)
    best = tl.max(m, axis=0)
    arg = tl.min(tl.where(m == best, arg, INT32_MAX), axis=0)
    return tl.minimum(best, FLOAT32_MAX), arg


@triton.jit
def _split_argmax_logsumexp(row_ptr, stride_v, tile_lo, tiles, n, scale, BLOCK_V: tl.constexpr):
    """(max, sum of exp2((l - max) * scale), lowest id of the max) over a split in one pass: :func:`_split_argmax`'s
    running max and id on the raw values (NaN never wins) beside :func:`_split_logsumexp`'s online sums on the
    scrubbed ones (greedy rows whose log-probabilities are asked for, at T = 1)."""
    lanes = tl.arange(0, BLOCK_V)
    m_arg = tl.full([BLOCK_V], -float("inf"), tl.float32)
    arg = (tile_lo * BLOCK_V + lanes).to(tl.int32)
    m = tl.full([BLOCK_V], -FLOAT32_MAX, tl.float32)
    z = tl.zeros([BLOCK_V], tl.float32)
    for masked in tl.static_range(2):
        first, last = _tile_range(tile_lo, tiles, n, masked, BLOCK_V)
        for tile in range(first, last):
            offs = tile * BLOCK_V + lanes
            raw = _load_tile(row_ptr, stride_v, offs, n, masked).to(tl.float32)
            new = raw > m_arg
            m_arg = tl.where(new, raw, m_arg)
            arg = tl.where(new, offs.to(tl.int32), arg)
            x = _finite_logits(raw)
            hi = tl.maximum(m, x)
            e = tl.exp2((tl.minimum(m, x) - hi) * scale)
            z = tl.where(x > m, z * e + 1.0, z + e)
            m = hi
    best_arg = tl.max(m_arg, axis=0)
    arg = tl.min(tl.where(m_arg == best_arg, arg, INT32_MAX), axis=0)
    best = tl.max(m, axis=0)
    total = tl.sum(z * tl.exp2((m - best) * scale), axis=0)
    return tl.minimum(best_arg, FLOAT32_MAX), total, arg


@triton.jit
def _split_logsumexp(row_ptr, stride_v, tile_lo, tiles, n, scale, cand, CAND: tl.constexpr, BLOCK_V: tl.constexpr):
    """(max, sum of exp2((l - max) * scale)) over a split: per-lane online sums, one exp per element, one reduction.

    Lanes start at the largest negative float (not -inf: min - max never meets -inf - -inf); a split of -inf only
    returns (-inf, 0). With CAND every lane also keeps its 4 largest logits, stored at `cand` [4, BLOCK_V] after the
    loop, and the third value returned is the largest 4th of them: every logit of the split that was not kept is at
    most that (the warpers' cut search certifies its cuts against it)."""
    lanes = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], -FLOAT32_MAX, tl.float32)
    z = tl.zeros([BLOCK_V], tl.float32)
    r1 = tl.full([BLOCK_V], -float("inf"), tl.float32)
    r2 = r1
    r3 = r1
    r4 = r1
    for masked in tl.static_range(2):
        first, last = _tile_range(tile_lo, tiles, n, masked, BLOCK_V)
        for tile in range(first, last):
            x = _finite_logits(_load_tile(row_ptr, stride_v, tile * BLOCK_V + lanes, n, masked))
            hi = tl.maximum(m, x)
            e = tl.exp2((tl.minimum(m, x) - hi) * scale)
            z = tl.where(x > m, z * e + 1.0, z + e)
            m = hi
            if CAND:  # insert x into the lane's sorted four (strictly greater moves down: ties all kept in order)
                above1 = x > r1
                above2 = x > r2
                above3 = x > r3
                r4 = tl.where(above3, r3, tl.maximum(r4, x))
                r3 = tl.where(above2, r2, tl.maximum(r3, x))
                r2 = tl.where(above1, r1, tl.maximum(r2, x))
                r1 = tl.maximum(r1, x)
    best = tl.max(m, axis=0)
    total = tl.sum(z * tl.exp2((m - best) * scale), axis=0)
    bound = -float("inf")
    if CAND:
        tl.store(cand + lanes, r1)
        tl.store(cand + BLOCK_V + lanes, r2)
        tl.store(cand + 2 * BLOCK_V + lanes, r3)
        tl.store(cand + 3 * BLOCK_V + lanes, r4)
        bound = tl.max(r4, axis=0)
    return tl.where(total > 0.0, best, -float("inf")), total, bound


@triton.jit
def _split_stats(row_ptr, stride_v, tile_lo, tiles, n, temp, scale, out, stride_sp, cand, CAND: tl.constexpr,
                 LOGPROBS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Stores a split's max at `out` and its sum of exponentials (sampled) or argmax bits (greedy) one plane on; with
    CAND (sampled rows) also its lanes' candidates at `cand` and their bound two planes on. With LOGPROBS greedy rows
    store their sum of exponentials at T = 1 one plane on and their argmax bits two planes on (greedy rows have no
    candidates: the plane is free there)."""
    if temp == 0.0:
        if LOGPROBS:
            best, total, arg = _split_argmax_logsumexp(row_ptr, stride_v, tile_lo, tiles, n, scale, BLOCK_V)
            tl.store(out, best)
            tl.store(out + stride_sp, total)
            tl.store(out + 2 * stride_sp, arg.to(tl.float32, bitcast=True))
        else:
            best, arg = _split_argmax(row_ptr, stride_v, tile_lo, tiles, n, BLOCK_V)
            tl.store(out, best)
            tl.store(out + stride_sp, arg.to(tl.float32, bitcast=True))
    else:
        best, total, bound = _split_logsumexp(row_ptr, stride_v, tile_lo, tiles, n, scale, cand, CAND, BLOCK_V)
        tl.store(out, best)
        tl.store(out + stride_sp, total)
        if CAND:
            tl.store(out + 2 * stride_sp, bound)


# Small arrays' strides (statistics, tokens, outputs, test hooks) are not specialised: their values follow B, K and S1,
@triton.jit(do_not_specialize=["B", "K", "V", "Vd", "tiles", "S1", "temperature", "stride_sp", "stride_sr"])
def _row_stats_kernel(
    target_ptr, stride_tb, stride_tt, stride_tv,  # [B, K+1, V] logits
    draft_ptr, stride_db, stride_dt, stride_dv,  # [B, K, Vd] logits (the target when there are none; never read then)
    num_draft_ptr,  # [B] int, read when RAGGED
    temp_ptr,  # [B] float32, read when ROW_TEMP
    stats_ptr, stride_sp, stride_sr,  # [2 (3 with CAND or LOGPROBS), B*(K+1) + B*K, S1] float32: max; sum of exp
    #                                   (sampled; greedy too with LOGPROBS) or argmax bits; the third plane: the bound
    #                                   of the split's candidates (CAND, sampled rows), argmax bits (LOGPROBS, greedy)
    out_ptr,  # [B, K+1] int64 contiguous tokens launch 2 writes, set to -1 here when FILL
    cand_ptr,  # [B*(K+1) + B*K, S1, 4, BLOCK_V] float32 candidates (contiguous), written when CAND
    B, K, V, Vd, tiles, S1, temperature,
    BLOCK_V: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr, FILL: tl.constexpr, CAND: tl.constexpr,
    PDL: tl.constexpr, LOGPROBS: tl.constexpr,
):
    if PDL:  # the next launch may start (its programs wait for this one's results before reading them)
        gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)  # target rows b*(K+1)+t, then draft rows B*(K+1) + b*K+t
    split = tl.program_id(1).to(tl.int64)
    is_draft, b, t = _row_position(row, B, K)
    k_b = _num_drafts(num_draft_ptr, b, K, RAGGED)
    temp, scale = _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP)
    if FILL:  # the tokens start at -1 (stream order puts this before launch 2): no launch of a fill of its own
        if (~is_draft) & (t == 0) & (split == 0):
            for t0 in range(0, K + 1, FILL_BLOCK):
                pos = t0 + tl.arange(0, FILL_BLOCK)
                tl.store(out_ptr + b * (K + 1) + pos, tl.full([FILL_BLOCK], -1, tl.int64), mask=pos <= K)
    tile_lo = split * tiles
    out = stats_ptr + row * stride_sr + split
    cand = cand_ptr + (row * S1 + split) * (4 * BLOCK_V)
    if is_draft:
        if (t < k_b) & (temp != 0.0):
            _split_stats(draft_ptr + b * stride_db + t * stride_dt, stride_dv, tile_lo, tiles, Vd, temp, scale, out,
                         stride_sp, cand, CAND, LOGPROBS, BLOCK_V)
    else:
        if t <= k_b:
            _split_stats(target_ptr + b * stride_tb + t * stride_tt, stride_tv, tile_lo, tiles, V, temp, scale, out,
                         stride_sp, cand, CAND, LOGPROBS, BLOCK_V)


def row_stats(target, draft, num_draft_tokens, temperature, block_v=None, num_splits=None, tokens=None,
              candidates=False, pdl=None, logprobs=False):
    """Launch 1: split statistics of every target and draft row a decision needs.

    Parameters
    ----------
    target : torch.Tensor
        [B, K+1, V] float32/bfloat16/float16 logits.
    draft : torch.Tensor or None
        [B, K, Vd] logits, Vd <= V.
    num_draft_tokens : torch.Tensor or None
        [B] int.
    temperature : float or torch.Tensor
        Float, or [B] float32 on the target's device; 0 marks a greedy row.
    block_v, num_splits : int or None
        Tile width and splits per row; None picks them for the device.
    tokens : torch.Tensor or None
        [B, K+1] int64 contiguous: the output launch 2 will write, set to -1 here (no fill launch of its own).
    candidates : bool
        The warpers' cut search follows: sampled rows also keep each lane's 4 largest logits, when those are at most
        an eighth of V (many rows, few splits: B*(K+1) at least the SMs, in practice), for the search to start from.
    pdl : bool or None
        Let the next launch start early (programmatic dependent launch); None: as ``launching.PDL`` and the device
        decide.
    logprobs : bool
        The log-probabilities of the emitted tokens follow: greedy rows also sum their exponentials at T = 1 (in the
        same pass), into stats[1], and put their argmax bits in a third plane, stats[2].

    Returns
    -------
    tuple
        (stats [2, R, S1] float32, S1) with R = B*(K+1) + B*K: stats[0] the split maxima, stats[1] the split sums of
        exp((l - max) / T) on sampled rows and the split argmax (int32 bits; view as torch.int32) on greedy rows.
        With `candidates`, a third item: None, or [R, S1 * 4 * BLOCK_V] float32 candidates, with stats[2] (a third
        plane) the largest logit of each split they may have left out. With `logprobs` stats has three planes too, and
        greedy rows hold their sums in stats[1] and their argmax in stats[2].
    """
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    vd = draft.shape[2] if draft is not None else 0
    rows = batch * k_plus_1 + batch * k
    device = target.device
    block_v, s1, tiles, num_warps = launching.launch_config("stats", device.type, device.index, rows, vocab,
                                                            target.itemsize, block_v, num_splits)
    cand = None
    if candidates and s1 * 4 * block_v * 8 <= vocab:
        cand = torch.empty(rows, s1 * 4 * block_v, dtype=torch.float32, device=device)
    stats = torch.empty(2 if cand is None and not logprobs else 3, rows, s1, dtype=torch.float32, device=device)
    row_temp = isinstance(temperature, torch.Tensor)
    # Draft rows only where some row samples (a float temperature of 0 needs none).
    with_drafts = draft is not None and (row_temp or temperature != 0.0)
    grid = (batch * k_plus_1 + (batch * k if with_drafts else 0), s1)
    if batch:
        d = draft if draft is not None else target  # (absent tensors: a dummy pointer, never read)
        args = (target, *target.stride(), d, *d.stride(), num_draft_tokens if num_draft_tokens is not None else target,
                temperature if row_temp else target, stats, rows * s1, s1, tokens if tokens is not None else stats,
                cand if cand is not None else stats, batch, k, vocab, vd, tiles, s1,
                0.0 if row_temp else float(temperature))
        constexprs = dict(BLOCK_V=block_v, RAGGED=num_draft_tokens is not None, ROW_TEMP=row_temp,
                          FILL=tokens is not None, CAND=cand is not None, PDL=launching.use_pdl(device, pdl),
                          LOGPROBS=bool(logprobs))
        launching.launch(_row_stats_kernel, grid, args, constexprs, num_warps, device)
    return (stats, s1, cand) if candidates else (stats, s1)
