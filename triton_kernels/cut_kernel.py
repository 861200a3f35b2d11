"""Launch 1.5, ``_warp_cut_kernel`` (only with top_k / top_p / min_p): every warped row's cut and the mass it keeps.

Grid (rows): one program per row finds the row's cut, the warpers' threshold (the row keeps its logits >= cut), and
the kept mass, without a sort: top-k's cut is the k-th largest logit, top-p's the largest logit whose mass at or above
it reaches top_p times what top-k kept, min-p's max + T ln(min_p). Logits compare as int32 keys that order like the
floats (-0.0 as 0.0), so a cut is one of the row's values and every tie with it is kept.

The search keeps a bracket of keys [lo, hi) with H(lo) >= goal > H(hi) (H the count, or the mass, at or above a key)
and narrows it by counting at PIVOTS pivots per pass over the row (per-lane accumulators: no barrier in the loop):
the first pass at fixed ratios to the row max (w = 2**-e), later ones evenly across the bracket, each pass also
tightening it to the lowest and highest key really inside. A pass that starts with at most BLOCK_V logits at or above
lo (or in the bracket) also copies them to a scratch row, each lane into its own column (slot j of lane i at
j * BLOCK_V + i: deterministic, no atomics, no scan), 8 slots per lane kept in registers and stored once; the search
then walks those few slots instead of V. A lane with more than SLOTS of them (rare: one per lane on average) leaves the
search on the row, which is only slower.

With many rows and few splits, launch 1 (``stats_kernel``) also keeps each lane's 4 largest logits of sampled rows,
and the largest 4th of them per split: every logit left out is at most that bound. The search runs over those
candidates first; its cuts stand when each lies above the bound (counts and masses there are the row's), which
simulations of LLM-like rows give for top-k 50 (with or without top-p 0.9) every time; else it walks the row.
Launch 2 reads p as exp((l - max) / T) / kept mass where l >= cut, and 0 below.

Bytes: reads the split statistics of each row (8 * S1), the candidates of each warped row twice (a first pass, then
one that compacts them), and passes over its scratch slots; where they cannot certify the cut it reads the row a few
times instead: once at the first pass, once more when it compacts (typically the second pass), more when the kept set
exceeds BLOCK_V logits (top-p alone on a flat row: up to ~7 passes). It writes 8 bytes a row and at most
8 * BLOCK_V * 4 bytes of scratch.

References: transformers' TopKLogitsWarper, TopPLogitsWarper and MinPLogitsWarper (the semantics this follows).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launching
from .constants import BLOCK_S
from .jit_helpers import (
    FLOAT32_MAX,
    INT32_MAX,
    INT64_MAX,
    _finite_logits,
    _load_tile,
    _num_drafts,
    _scaled_temperature,
    _splat,
    _tile_range,
    gdc_launch_dependents,
)

PIVOTS = tl.constexpr(8)  # pivots per pass of the search
SLOTS = tl.constexpr(8)  # the scratch row's slots per lane
KEY_NEG_INF = tl.constexpr(-2139095041)  # the key of -inf (0xff800000 ^ 0x7fffffff, signed): below every logit
CUT_BLOCK_V = 1024  # 4 ids per thread with 8 warps: the pivots' per-lane counts and masses take 64 registers
CUT_WARPS = 8


@triton.jit
def _key(x):
    """float32 -> int32 with the same order (-0.0 and 0.0 both 0)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(x == 0.0, 0, bits ^ ((bits >> 31) & INT32_MAX))


@triton.jit
def _value(key):
    """The float32 of a key (the inverse of :func:`_key`)."""
    return (key ^ ((key >> 31) & INT32_MAX)).to(tl.float32, bitcast=True)


@triton.jit
def _pivots(lo, hi, m, scale, first):
    """PIVOTS ascending keys in [lo + 1, hi - 1] (int64 lo, hi with hi - lo >= 2): on the first pass at w = 2**-e,
    e = i * i / 2 for i = 7 .. 0 (e from 24.5 to 0) below the max, else evenly spaced."""
    j = tl.arange(0, PIVOTS)
    i = j * -1 + (PIVOTS - 1)  # (tensor first: the interpreter)
    e = (i * i).to(tl.float32) * 0.5
    by_value = _key(m - e / scale).to(tl.int64)
    span = hi - lo
    even = lo + (span * (j + 1)) // (PIVOTS + 1)
    piv = tl.where(_splat(first, j), by_value, even)
    return tl.minimum(tl.maximum(piv, lo + 1), hi - 1).to(tl.int32)


@triton.jit
def _count_at_pivots(cnt, mass, lowest, highest, x, valid, piv, lo, hi, m, scale, WITH_MASS: tl.constexpr):
    """Add the tile `x` [1, BLOCK_V] (finite logits) to the per-lane counts (and masses, WITH_MASS) [PIVOTS, BLOCK_V]
    at or above each pivot, and to the per-lane lowest and highest key inside the bracket [lo, hi) (where `valid`).
    Tiles are 2-D, one row broadcast over the pivots, so that the tile and the accumulators share one layout (a 1-D
    tile expanded here would cross threads through shared memory, with barriers, on every tile)."""
    key = _key(x)
    ge = key >= piv[:, None]  # -inf (padding) is below every pivot
    inside = valid & (key >= lo) & (key < hi)
    cnt += ge.to(tl.int32)
    if WITH_MASS:
        mass += tl.where(ge, tl.exp2((x - m) * scale), 0.0)
    return (cnt, mass, tl.minimum(lowest, tl.where(inside, key, INT32_MAX)),
            tl.maximum(highest, tl.where(inside, key, -INT32_MAX)))


@triton.jit
def _row_pass(src, stride_v, n, piv, lo, hi, m, scale, scratch, top, COMPACT: tl.constexpr, WITH_MASS: tl.constexpr,
              BLOCK_V: tl.constexpr):
    """One pass over the row src[0:n] (whole tiles unmasked, so that aligned rows load in vectors, then the partial
    one): [PIVOTS] counts (and masses, WITH_MASS; else 0) at or above each pivot, the lowest and highest key inside
    [lo, hi), and, when COMPACT, the logits with key in [lo, top) copied to the scratch row: [1, BLOCK_V] slots used
    per lane (more than SLOTS: not copied).

    Each lane's copies stay in registers, slot j in row j of `held` (the tile's layout, broadcast like the pivots),
    and go out in one store after the loop: a store per tile at per-lane addresses would move every tile between
    threads through shared memory, with barriers."""
    lanes = tl.arange(0, BLOCK_V)[None, :]
    cnt = tl.zeros([PIVOTS, BLOCK_V], tl.int32)
    mass = tl.zeros([PIVOTS, BLOCK_V], tl.float32)
    lowest = lanes * 0 + INT32_MAX
    highest = lanes * 0 - INT32_MAX
    slots = lanes * 0
    slot_ids = tl.arange(0, SLOTS)[:, None]
    held = tl.full([SLOTS, BLOCK_V], -float("inf"), tl.float32)
    for masked in tl.static_range(2):
        first, last = _tile_range(0, tl.cdiv(n, BLOCK_V), n, masked, BLOCK_V)
        for tile in range(first, last):
            offs = tile * BLOCK_V + lanes
            x = _finite_logits(_load_tile(src, stride_v, offs, n, masked))
            cnt, mass, lowest, highest = _count_at_pivots(cnt, mass, lowest, highest, x, offs < n, piv, lo, hi, m,
                                                          scale, WITH_MASS)
            if COMPACT:
                key = _key(x)
                keep = (offs < n) & (key >= lo) & (key < top)
                held = tl.where(keep & (slot_ids == slots), x, held)
                slots += keep.to(tl.int32)
    if COMPACT:
        tl.store(scratch + slot_ids * BLOCK_V + lanes, held, mask=slot_ids < slots)
    return tl.sum(cnt, axis=1), tl.sum(mass, axis=1), tl.min(tl.min(lowest, axis=1), axis=0), \
        tl.max(tl.max(highest, axis=1), axis=0), slots


@triton.jit
def _scratch_pass(scratch, slots, piv, lo, hi, m, scale, WITH_MASS: tl.constexpr, BLOCK_V: tl.constexpr):
    """:func:`_row_pass` over the scratch row's used slots ([1, BLOCK_V] per lane)."""
    lanes = tl.arange(0, BLOCK_V)[None, :]
    cnt = tl.zeros([PIVOTS, BLOCK_V], tl.int32)
    mass = tl.zeros([PIVOTS, BLOCK_V], tl.float32)
    lowest = lanes * 0 + INT32_MAX
    highest = lanes * 0 - INT32_MAX
    for j in range(0, tl.max(tl.max(slots, axis=1), axis=0)):
        x = tl.load(scratch + j * BLOCK_V + lanes, mask=slots > j, other=-float("inf"))
        cnt, mass, lowest, highest = _count_at_pivots(cnt, mass, lowest, highest, x, slots > j, piv, lo, hi, m,
                                                      scale, WITH_MASS)
    return tl.sum(cnt, axis=1), tl.sum(mass, axis=1), tl.min(tl.min(lowest, axis=1), axis=0), \
        tl.max(tl.max(highest, axis=1), axis=0)


@triton.jit
def _search(row, stride_v, n, scratch, lo, hi, cnt_lo, mass_lo, cnt_hi, mass_hi, slots, sc_lo, sc_hi, sc_cnt,
            sc_mass, first, goal, m, scale, BY_MASS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Narrow [lo, hi) until hi = lo + 1: lo is then the largest key with H(lo) >= goal (H the count, or the mass
    when BY_MASS), and cnt_lo / mass_lo the count and mass at or above it; cnt_hi / mass_hi are H(hi).

    The scratch row, when `slots` [1, BLOCK_V] (its use per lane) is not -1, holds the keys in [sc_lo, sc_hi), with
    (sc_cnt, sc_mass) = H(sc_hi): a bracket inside that range is searched there. A row pass copies there everything at
    or above lo when that is at most BLOCK_V logits (each stage of the search can use it), else the bracket alone
    when that is (the later stages walk the row again)."""
    while hi - lo > 1:
        piv = _pivots(lo, hi, m, scale, first)
        first = first & False
        if (tl.min(tl.min(slots, axis=1), axis=0) >= 0) & (sc_lo <= lo) & (hi <= sc_hi):
            cnt, mass, lowest, highest = _scratch_pass(scratch, slots, piv, lo, hi, m, scale, BY_MASS, BLOCK_V)
            cnt += sc_cnt
            mass += sc_mass
        else:
            whole = cnt_lo <= BLOCK_V
            compact = whole | (cnt_lo - cnt_hi <= BLOCK_V)
            top = tl.where(whole, INT64_MAX, hi)
            if compact:
                cnt, mass, lowest, highest, used = _row_pass(row, stride_v, n, piv, lo, hi, m, scale, scratch, top,
                                                             True, BY_MASS, BLOCK_V)
            else:
                cnt, mass, lowest, highest, used = _row_pass(row, stride_v, n, piv, lo, hi, m, scale, scratch, top,
                                                             False, BY_MASS, BLOCK_V)
            if compact & (tl.max(tl.max(used, axis=1), axis=0) <= SLOTS):
                slots = used
                sc_lo = lo
                sc_hi = top
                sc_cnt = tl.where(whole, 0, cnt_hi)
                sc_mass = tl.where(whole, 0.0, mass_hi)
        if BY_MASS:
            ok = mass >= goal
        else:
            ok = cnt.to(tl.float32) >= goal
        new_lo = tl.max(tl.where(ok, piv, KEY_NEG_INF), axis=0).to(tl.int64)
        if new_lo > lo:  # (H is non-increasing: ok holds on a prefix of the pivots)
            at = ok & (piv == new_lo)
            cnt_lo = tl.max(tl.where(at, cnt, 0), axis=0)
            mass_lo = tl.max(tl.where(at, mass, 0.0), axis=0)
            lo = new_lo
        new_hi = tl.min(tl.where(ok, INT32_MAX, piv), axis=0).to(tl.int64)
        if new_hi < hi:
            at = ~ok & (piv == new_hi)
            cnt_hi = tl.min(tl.where(at, cnt, INT32_MAX), axis=0)
            mass_hi = tl.min(tl.where(at, mass, FLOAT32_MAX), axis=0)
            hi = new_hi
        # Tighten the bracket to the keys really in it (lowest and highest were taken in the bracket before this
        # pass, which holds the new one): no key lies in [lo, lowest), so H(lowest) = H(lo); none in (highest, hi),
        # so H(highest + 1) = H(hi).
        if (lowest > lo) & (lowest < hi):
            lo = lowest.to(tl.int64)
        hi = tl.minimum(hi, tl.maximum(highest.to(tl.int64) + 1, lo + 1))
    return lo, cnt_lo, mass_lo, slots, sc_lo, sc_hi, sc_cnt, sc_mass, first


@triton.jit
def _mass_at(src, stride_v, n, scratch, key, slots, sc_lo, sc_hi, m, scale, BLOCK_V: tl.constexpr):
    """The mass of the logits with key >= `key`: from the scratch row when it holds all of them, else a row pass."""
    piv = tl.full([PIVOTS], 0, tl.int32) + key.to(tl.int32)
    if (tl.min(tl.min(slots, axis=1), axis=0) >= 0) & (sc_lo <= key) & (sc_hi == INT64_MAX):
        mass = _scratch_pass(scratch, slots, piv, key, key + 1, m, scale, True, BLOCK_V)[1]
    else:
        mass = _row_pass(src, stride_v, n, piv, key, key + 1, m, scale, scratch, key, False, True, BLOCK_V)[1]
    return tl.max(mass, axis=0)


@triton.jit(do_not_specialize=["B", "K", "V", "Vd", "S1", "n_cand", "temperature", "top_k", "top_p", "min_offset",
                               "stride_sp", "stride_sr", "stride_cp", "stride_scratch"])  # (stride_cr: 16 * x)
def _warp_cut_kernel(
    target_ptr, stride_tb, stride_tt, stride_tv,  # [B, K+1, V] logits
    draft_ptr, stride_db, stride_dt, stride_dv,  # [B, K, Vd] logits (the target when there are none; never read then)
    num_draft_ptr,  # [B] int, read when RAGGED
    temp_ptr,  # [B] float32, read when ROW_TEMP
    top_k_ptr, top_p_ptr, min_offset_ptr,  # [B] int64, float32, float32, read when ROW_WARP
    stats_ptr, stride_sp, stride_sr,  # [2 (3 with CAND), B*(K+1) + B*K, S1] float32 launch 1's split statistics
    cand_ptr, stride_cr,  # [B*(K+1) + B*K, n_cand] float32 launch 1's candidates, read when CAND
    cut_ptr, stride_cp,  # [2, B*(K+1) + B*K] float32 out: each row's cut, and the mass kept (relative to its max)
    scratch_ptr, stride_scratch,  # [B*(K+1) + B*K, depth * BLOCK_V] float32 scratch rows, depth <= SLOTS
    B, K, V, Vd, S1, n_cand, temperature, top_k, top_p, min_offset,
    BLOCK_V: tl.constexpr, BLOCK_S: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr,
    ROW_WARP: tl.constexpr, CAND: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # launch 2 may start (it waits for this launch's cuts before reading them)
        gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)  # the rows of launch 1
    # (jit_helpers._row_position written out: as a call, Triton 3.6 gives the PDL variant 5 more registers)
    is_draft = row >= B * (K + 1)
    b = tl.where(is_draft, (row - B * (K + 1)) // tl.maximum(K, 1), row // (K + 1))
    t = tl.where(is_draft, (row - B * (K + 1)) % tl.maximum(K, 1), row % (K + 1))
    k_b = _num_drafts(num_draft_ptr, b, K, RAGGED)
    temp, scale = _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP)
    if ROW_WARP:
        k = tl.load(top_k_ptr + b)
        top_p = tl.load(top_p_ptr + b)
        min_offset = tl.load(min_offset_ptr + b)
    else:
        k = top_k
    bound = -float("inf")
    if CAND:  # every logit launch 1 did not keep is at most this
        s = tl.arange(0, BLOCK_S)
        bound = tl.max(tl.load(stats_ptr + 2 * stride_sp + row * stride_sr + s, mask=s < S1, other=-float("inf")),
                       axis=0)
    cand = cand_ptr + row * stride_cr
    if is_draft:
        _row_cut(draft_ptr + b * stride_db + t * stride_dt, stride_dv, Vd, cand, n_cand, bound, t < k_b, row,
                 stats_ptr, stride_sp, stride_sr, S1, temp, scale, k, top_p, min_offset, cut_ptr, stride_cp,
                 scratch_ptr + row * stride_scratch, CAND, BLOCK_V, BLOCK_S)
    else:
        _row_cut(target_ptr + b * stride_tb + t * stride_tt, stride_tv, V, cand, n_cand, bound, t <= k_b, row,
                 stats_ptr, stride_sp, stride_sr, S1, temp, scale, k, top_p, min_offset, cut_ptr, stride_cp,
                 scratch_ptr + row * stride_scratch, CAND, BLOCK_V, BLOCK_S)


@triton.jit
def _row_cut(src, stride_v, n, cand, n_cand, bound, needed, row, stats_ptr, stride_sp, stride_sr, S1, temp, scale, k,
             top_p, min_offset, cut_ptr, stride_cp, scratch, CAND: tl.constexpr, BLOCK_V: tl.constexpr,
             BLOCK_S: tl.constexpr):
    """One row's cut and kept mass (-inf and the whole row's sum where nothing is cut: greedy rows, rows no decision
    reads, rows of -inf). With CAND the search runs first over launch 1's candidates, and its result stands when every
    key it decided on lies above `bound` (then every logit at or above it is a candidate: the counts and masses there
    are the row's); else it runs over the row."""
    # The row's max and sum of exp from its split statistics (as launch 2 combines them).
    s = tl.arange(0, BLOCK_S)
    m_s = tl.load(stats_ptr + row * stride_sr + s, mask=(s < S1) & _splat(needed, s), other=-float("inf"))
    z_s = tl.load(stats_ptr + stride_sp + row * stride_sr + s, mask=(s < S1) & _splat(needed, s), other=0.0)
    m = tl.max(m_s, axis=0)
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    z = tl.sum(z_s * tl.exp2((m_s - m_safe) * scale), axis=0)
    cut = -float("inf")
    kept = tl.where(z > 0.0, z, 1.0)
    if needed & (temp != 0.0) & (m > -float("inf")):
        certified = temp != temp
        if CAND:
            cut, kept, certified = _cut_search(cand, 1, n_cand, n, _key(bound).to(tl.int64), m, z, scale, k, top_p,
                                               min_offset, scratch, BLOCK_V)
        if not certified:
            cut, kept, certified = _cut_search(src, stride_v, n, n, tl.cast(KEY_NEG_INF - 1, tl.int64), m, z, scale,
                                               k, top_p, min_offset, scratch, BLOCK_V)
    tl.store(cut_ptr + row, cut)
    tl.store(cut_ptr + stride_cp + row, kept)


@triton.jit
def _cut_search(src, stride_v, n, n_row, bound, m, z, scale, k, top_p, min_offset, scratch, BLOCK_V: tl.constexpr):
    """(cut, kept mass, certified) of the logits src[0:n] of a row of n_row logits whose max is m and whole mass z
    (src the row itself, or n <= n_row candidates); certified when every cut decided lies above the key `bound` (counts
    and masses above it are exact) and top-k does not ask for more logits than src holds."""
    # Stage 1, top-k: the k-th largest logit (goal: a count of k). Stage 2, top-p: the largest logit whose mass at or
    # above it reaches top_p times the mass top-k kept. Each stage starts from the last one's lo.
    lo = tl.cast(KEY_NEG_INF, tl.int64)  # the bracket in int64: hi - lo exceeds 32 bits
    top = _key(m).to(tl.int64) + 1
    cnt_lo = n
    mass_lo = z
    slots = tl.full([1, BLOCK_V], -1, tl.int32)  # no scratch row yet
    sc_lo = lo
    sc_hi = lo
    sc_cnt = n * 0
    sc_mass = z * 0.0
    first = m == m
    certified = (k <= 0) | (k >= n_row) | (k < n)
    if (k > 0) & (k < n_row) & (k < n):  # (counts only: the kept mass once, at the cut)
        lo, cnt_lo, mass_lo, slots, sc_lo, sc_hi, sc_cnt, sc_mass, first = _search(
            src, stride_v, n, scratch, lo, top, cnt_lo, mass_lo, n * 0, z * 0.0, slots, sc_lo, sc_hi, sc_cnt,
            sc_mass, first, k.to(tl.float32), m, scale, False, BLOCK_V)
        mass_lo = _mass_at(src, stride_v, n, scratch, lo, slots, sc_lo, sc_hi, m, scale, BLOCK_V)
        certified = certified & (lo > bound)
    if top_p < 1.0:
        lo, cnt_lo, mass_lo, slots, sc_lo, sc_hi, sc_cnt, sc_mass, first = _search(
            src, stride_v, n, scratch, lo, top, cnt_lo, mass_lo, n * 0, z * 0.0, slots, sc_lo, sc_hi, sc_cnt,
            sc_mass, first, top_p * mass_lo, m, scale, True, BLOCK_V)
        certified = certified & (lo > bound)
    cut = _value(lo.to(tl.int32))
    kept = mass_lo
    # Stage 3, min-p: a cut at max + T ln(min_p); its mass needs one more pass when it is the highest cut.
    cut_m = m + min_offset
    if cut_m > cut:
        cut = cut_m
        key_m = _key(cut_m).to(tl.int64)
        kept = _mass_at(src, stride_v, n, scratch, key_m, slots, sc_lo, sc_hi, m, scale, BLOCK_V)
        certified = certified & (key_m > bound)
    return cut, kept, certified


def warp_cuts(target, draft, num_draft_tokens, temperature, warp, stats, pdl=None):
    """Launch 1.5: every warped row's cut (the row keeps its logits >= cut) and the mass it keeps.

    Parameters
    ----------
    target, draft, num_draft_tokens, temperature
        As in :func:`~.stats_kernel.row_stats`.
    warp : specsampler.torch_backend.Warp
        top_k (int or [B] int64), top_p (float or [B] float32), min_offset (float or [B] float32: T ln(min_p)).
    stats : tuple
        The output of :func:`~.stats_kernel.row_stats` (with or without candidates).
    pdl : bool or None
        As in :func:`~.stats_kernel.row_stats`.

    Returns
    -------
    torch.Tensor
        [2, R] float32, R = B*(K+1) + B*K: [0] the cuts (-inf: nothing removed), [1] the sums of
        exp((l - max) / T) over the kept logits; rows of launch 1's grid only.
    """
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    vd = draft.shape[2] if draft is not None else 0
    rows = batch * k_plus_1 + batch * k
    device = target.device
    stats_t, s1 = stats[:2]
    cand = stats[2] if len(stats) > 2 else None
    cuts = torch.empty(2, rows, dtype=torch.float32, device=device)
    row_temp = isinstance(temperature, torch.Tensor)
    with_drafts = draft is not None and (row_temp or temperature != 0.0)
    grid_rows = batch * k_plus_1 + (batch * k if with_drafts else 0)
    depth = min(SLOTS.value, triton.cdiv(vocab, CUT_BLOCK_V))
    scratch = torch.empty(grid_rows, depth * CUT_BLOCK_V, dtype=torch.float32, device=device)
    if not batch:
        return cuts
    row_warp = any(isinstance(v, torch.Tensor) for v in warp)
    if row_warp:
        top_k, top_p, min_offset = (v if isinstance(v, torch.Tensor) else torch.full(
            (batch,), v, dtype=dtype, device=device) for v, dtype in zip(warp, (torch.int64, torch.float32,
                                                                              torch.float32), strict=True))
        scalars = (0, 1.0, 0.0)
    else:
        top_k = top_p = min_offset = target  # (a dummy pointer, never read)
        scalars = (int(warp.top_k), float(warp.top_p), float(warp.min_offset))
    d = draft if draft is not None else target
    c = cand if cand is not None else stats_t
    args = (target, *target.stride(), d, *d.stride(), num_draft_tokens if num_draft_tokens is not None else target,
            temperature if row_temp else target, top_k, top_p, min_offset, stats_t, *stats_t.stride()[:2],
            c, c.stride(0), cuts, cuts.stride(0), scratch, scratch.stride(0), batch, k, vocab, vd, s1,
            cand.shape[1] if cand is not None else 0, 0.0 if row_temp else float(temperature), *scalars)
    constexprs = dict(BLOCK_V=CUT_BLOCK_V, BLOCK_S=BLOCK_S, RAGGED=num_draft_tokens is not None, ROW_TEMP=row_temp,
                      ROW_WARP=row_warp, CAND=cand is not None, PDL=launching.use_pdl(device, pdl))
    launching.launch(_warp_cut_kernel, (grid_rows, 1), args, constexprs, CUT_WARPS, device)
    return cuts
