"""Fused speculative-decoding verification: two Triton launches from logits (three with sampling warpers), one from
probabilities.

Algorithm (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318). p target, q draft,
x_t the drafted tokens, K_b the drafts row b really has, T_b its temperature (0: greedy).

Launch 1, ``_row_stats_kernel`` (logits only), grid (rows, S1): program (row, split) walks one split of one target
or draft row in BLOCK_V tiles (whole tiles without a mask, so aligned rows load in 128-bit vectors, then the row's
partial tile). Every lane of the tile keeps its own accumulators across all the tiles it visits, and the program
reduces across lanes once, after its loop: no block reduction (no barrier) inside the vocabulary loop.
- Sampled rows: the lane's running max m and sum z of exp((l - m) / T), with one exp per element:
  e = exp((min(l, m) - max(l, m)) / T); z = z * e + 1 when l is a new max, z + e otherwise.
- Greedy rows: the lane's running max and its lowest id (strictly greater wins, so a lane keeps its first id); no
  exponential at all. Launch 2 needs only the argmax there.
The program writes its split's max and, in the second plane, the sum (sampled) or the argmax (greedy, int32 bits).
Rows no decision can reach (t > K_b; draft rows of greedy rows) are skipped, and with a float temperature of 0 the
grid holds no draft rows at all. NaN is read as -inf and +inf as the largest float32; padding lanes load -inf; so no
padding lane ever wins, and a row that is all -inf has max -inf and sum 0: probability 0 everywhere.

Launch 1.5, ``_warp_cut_kernel`` (only with top_k / top_p / min_p), grid (rows): one program per row finds the row's
cut, the warpers' threshold (the row keeps its logits >= cut), and the kept mass, without a sort: top-k's cut is the
k-th largest logit, top-p's the largest logit whose mass at or above it reaches top_p times what top-k kept, min-p's
max + T ln(min_p). Logits compare as int32 keys that order like the floats, so a cut is one of the row's values and
every tie with it is kept. A bracket of keys [lo, hi) with H(lo) >= goal > H(hi) (H the count, or the mass, at or
above a key) narrows by counting at 8 pivots per pass: the first pass at fixed ratios to the row max, later ones
evenly across the bracket, each pass also tightening it to the lowest and highest key really inside. A pass that
starts with at most BLOCK_V logits at or above lo (or in the bracket) also copies them to a scratch row, 8 slots per
lane kept in registers and stored once; the search then walks those few slots instead of V. With many rows and few
splits (the candidates at most V / 8), launch 1 also keeps each lane's 4 largest logits of sampled rows, and the
largest 4th of them per split: every logit left out is at most that bound. The search runs over those candidates
first; its cuts stand when each lies above the bound (counts and masses there are the row's), which simulations of
LLM-like rows give for top-k 50 (with or without top-p 0.9) every time; else it walks the row. Launch 2 reads p as
exp((l - max) / T) / kept mass where l >= cut, and 0 below.

Launch 2, ``_verify_kernel``, grid (B, S2): every program of row b first reads the drafts x_t and the scores at them
(the call's inputs: with programmatic dependent launch, below, before it waits for the launch before), then combines
the split statistics of its K+1 target and K draft rows (or reads probabilities directly) into p_t(x_t) and q_t(x_t),
BLOCK_K positions at a time (the loop over further positions is compiled only for K + 1 > BLOCK_K), and decides
acceptance:
u_t * q_t(x_t) < p_t(x_t) (greedy: x_t == argmax p_t). A position whose draft gives x_t no probability (q_t(x_t) = 0:
a -inf or NaN logit, an id past the draft's vocabulary) is one-hot at x_t: accepted with probability p_t(x_t), and
its residual is p_t without x_t, which keeps the output exactly p whatever made x_t. n is the first rejection, K_b if
none. A greedy row (T_b below 2**-126, where 1 / T_b would overflow, counts as 0) emits argmax p_n and is done.
A sampled row runs the exponential race over its split of row n: the key of id x is r(x) / E_x with
r = max(0, p_n - q_n) (r = p_n for the bonus row) and E_x ~ Exp(1); argmax of the keys is a draw from r / sum(r) with
no normalisation and no prefix sum. Each lane keeps its best key and id across the tiles, the
program reduces once and folds its best (key, id), packed in an int64 so that a larger key and then a lower id wins,
and its share of sum(r) into a per-row workspace with atomics; the last program of the row (an acq_rel counter) reads
them back, resets the workspace to zero and writes the row. Only when sum(r) <= RESIDUAL_EPS (p equals q up to
rounding) does that last program race p_n / E_x over the whole row, and only when p_n has no mass at all 1 / E_x
(uniform): the fallbacks cost nothing on the rows that do not need them, and need no host synchronisation.

Randomness is counter-based: Philox keyed by the seed (per batch or per row). One Philox call (10 rounds) gives the
four uniforms of vocabulary ids 4g .. 4g+3 (counters: group g, position n, row, stream 1); the acceptance uniforms
use stream 0. The mapping from ids to numbers does not depend on the tile width or the splits: the same seed gives
the same tokens in every launch configuration, and a [B] seed makes a row's tokens independent of its place in the
batch. A test hook replaces Philox with given uniforms [B, K] and noise [B, V], which the torch backend accepts too,
so both can be compared token for token.

Bytes per launch, with s the element size of the scores and S1, S2 the split counts:
- launch 1 reads each needed logit once, at most B*(K+1)*V*s + B*K*Vd*s, and writes 8 * rows * S1;
- with candidates launch 1 also writes 16 * S1 * BLOCK_V bytes a sampled row (plus 4 * S1);
- launch 1.5 reads the candidates of each warped row twice (a first pass, then one that compacts them), and passes
  over its scratch slots; where they cannot certify the cut it reads the row a few times instead: once at the first
  pass, once more when it compacts (typically the second pass), more when the kept set exceeds BLOCK_V logits (top-p
  alone on a flat row: up to ~7 passes). It writes 8 bytes a row and at most 8 * BLOCK_V * 4 bytes of scratch.
- launch 2 reads the statistics (8 * B*(2K+1) * S1 per program, from cache), 2K gathered scores, the K drafts, and
  for each sampled row one residual row pair, (V + Vd) * s (the whole row pair again, by one program, in the rare
  fallback); it writes the tokens, 8 * B*(K+2), and touches a workspace of 24 bytes per row with atomics.
From probabilities there is only launch 2. Nothing of size B*(K+1)*V is allocated; there is no host synchronisation,
and the workspace is zero again after every launch (and never freed: a captured graph may point at it), so the call
can be captured in a CUDA graph. The tokens start at -1 (launch 1 sets them; from probabilities a fill does), so a
row that were never written could not look valid.

Host side: tile widths and splits per (launch, B, V, dtype, device) come from an H200 sweep (`_launch_config`);
launches are guarded to the tensors' device, and after a specialisation's first launch through Triton, go straight to
its compiled launcher (`_launch`), which gets the tensors' addresses as ints (no data_ptr() call and no driver query per
pointer). Programmatic dependent launch (`PDL`, sm_90+, off until a GPU run has timed it): launch 1 and the cut launch
let launch 2 start at once (griddepcontrol.launch_dependents), and launch 2 reads its inputs, then waits for their
results (griddepcontrol.wait), overlapping its start and first dependent loads with the launch before.

References: vLLM's Triton rejection sampler (vllm/v1/sample/rejection_sampler.py) and the fix for padding lanes
winning a tie (GHSA-8wr5-jm2h-8r4f); FlashInfer's chain_speculative_sampling; Triton's tutorials 02-fused-softmax
and 04-low-memory-dropout; Salmon et al. 2011 (Philox).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.random import philox

try:  # grid dependency control (programmatic dependent launch, sm_90+): Triton 3.3 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - an older Triton: PDL stays off
    gdc_launch_dependents = gdc_wait = None

from specsampler.torch_backend import GREEDY_BELOW, RESIDUAL_EPS  # one definition for both backends

BLOCK_K = 8  # positions decided per step of the loop over K (16 doubles launch 2's registers: a 16 x 64 combine)
BLOCK_S = 64  # the most statistics splits per row (S1 <= BLOCK_S)

FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
FLOAT32_MIN_NORMAL = tl.constexpr(GREEDY_BELOW)  # 2**-126: below it a temperature makes a row greedy
LOG2_E = tl.constexpr(1.4426950408889634)
INT32_MAX = tl.constexpr(2147483647)
INT64_MAX = tl.constexpr(9223372036854775807)
MASS_SCALE = tl.constexpr(1099511627776.0)  # 2**40: the residual mass is summed in fixed point (exact, any order)
UNIFORM_SCALE = tl.constexpr(5.9604644775390625e-08)  # 2**-24: uniforms are multiples of it
FILL_BLOCK = tl.constexpr(16)  # token positions set to -1 per store
RNG_GROUP = tl.constexpr(4)  # vocabulary ids per Philox call (its four 32-bit outputs)


@triton.jit
def _splat(flag, like):
    """A scalar condition as a tensor shaped like `like` (Triton's interpreter needs tensor masks)."""
    return (like * 0 + flag.to(tl.int32)) != 0


@triton.jit
def _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP: tl.constexpr):
    """(T, log2(e) / T) for row b: exp((l - m) / T) = exp2((l - m) * scale). T below the smallest normal float32
    (1 / T would overflow; negative values too) reads as 0, greedy, as in the torch backend; scale = log2(e) there."""
    if ROW_TEMP:
        temp = tl.load(temp_ptr + b).to(tl.float32)
    else:
        temp = tl.cast(temperature, tl.float32)
    temp = tl.where(temp < FLOAT32_MIN_NORMAL, 0.0, temp)
    return temp, 1.0 / tl.where(temp == 0.0, 1.0, temp) * LOG2_E


@triton.jit
def _num_drafts(num_draft_ptr, b, K, RAGGED: tl.constexpr):
    """K_b, clamped to [0, K] so that no value of num_draft_tokens reads out of bounds."""
    if RAGGED:
        k_b = tl.minimum(tl.maximum(tl.load(num_draft_ptr + b).to(tl.int64), 0), K)
    else:
        k_b = tl.cast(K, tl.int64)
    return k_b


@triton.jit
def _finite_logits(x):
    """Logits as float32 with NaN -> -inf and +inf -> the largest float32."""
    x = x.to(tl.float32)
    return tl.minimum(tl.where(x == x, x, -float("inf")), FLOAT32_MAX)


@triton.jit
def _tile_range(tile_lo, tiles, n, MASKED: tl.constexpr, BLOCK_V: tl.constexpr):
    """The tiles of split [tile_lo, tile_lo + tiles) that are whole (MASKED=0) or the row's partial one (MASKED=1)."""
    if MASKED:
        return tl.maximum(tile_lo, n // BLOCK_V), tl.minimum(tile_lo + tiles, tl.cdiv(n, BLOCK_V))
    else:
        return tile_lo, tl.minimum(tile_lo + tiles, n // BLOCK_V)


@triton.jit
def _load_tile(row_ptr, stride_v, offs, n, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(row_ptr + offs * stride_v, mask=offs < n, other=-float("inf"))
    else:
        return tl.load(row_ptr + offs * stride_v)


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
                 BLOCK_V: tl.constexpr):
    """Stores a split's max at `out` and its sum of exponentials (sampled) or argmax bits (greedy) one plane on; with
    CAND (sampled rows) also its lanes' candidates at `cand` and their bound two planes on."""
    if temp == 0.0:
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
# and a value of 1 or a multiple of 16 there would compile a variant per shape for nothing.
@triton.jit(do_not_specialize=["B", "K", "V", "Vd", "tiles", "S1", "temperature", "stride_sp", "stride_sr"])
def _row_stats_kernel(
    target_ptr, stride_tb, stride_tt, stride_tv,  # [B, K+1, V] logits
    draft_ptr, stride_db, stride_dt, stride_dv,  # [B, K, Vd] logits (the target when there are none; never read then)
    num_draft_ptr,  # [B] int, read when RAGGED
    temp_ptr,  # [B] float32, read when ROW_TEMP
    stats_ptr, stride_sp, stride_sr,  # [2 (3 with CAND), B*(K+1) + B*K, S1] float32: max; sum of exp (sampled) or
    #                                   argmax bits; with CAND the bound of the split's candidates
    out_ptr,  # [B, K+1] int64 contiguous tokens launch 2 writes, set to -1 here when FILL
    cand_ptr,  # [B*(K+1) + B*K, S1, 4, BLOCK_V] float32 candidates (contiguous), written when CAND
    B, K, V, Vd, tiles, S1, temperature,
    BLOCK_V: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr, FILL: tl.constexpr, CAND: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:  # the next launch may start (its programs wait for this one's results before reading them)
        gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)  # target rows b*(K+1)+t, then draft rows B*(K+1) + b*K+t
    split = tl.program_id(1).to(tl.int64)
    is_draft = row >= B * (K + 1)
    b = tl.where(is_draft, (row - B * (K + 1)) // tl.maximum(K, 1), row // (K + 1))
    t = tl.where(is_draft, (row - B * (K + 1)) % tl.maximum(K, 1), row % (K + 1))
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
                         stride_sp, cand, CAND, BLOCK_V)
    else:
        if t <= k_b:
            _split_stats(target_ptr + b * stride_tb + t * stride_tt, stride_tv, tile_lo, tiles, V, temp, scale, out,
                         stride_sp, cand, CAND, BLOCK_V)


# ------------------------------------------------------------------------------------------------- warpers' cut
# Launch 1.5, ``_warp_cut_kernel``: one program per row finds the row's cut (keep logits >= cut) and the mass kept.
# Logits are compared as int32 keys that order like the floats (-0.0 as 0.0), so a cut is always one of the row's own
# values and every tie with it is kept. A search keeps a bracket of keys [lo, hi) with H(lo) >= goal > H(hi), H(v) the
# count (top-k) or the mass (top-p) of the logits with key >= v, and narrows it by counting at PIVOTS pivots per pass
# over the row (per-lane accumulators: no barrier in the loop): the first pass at fixed ratios to the row max
# (w = 2**-e), then evenly in key space. A pass that starts with at most BLOCK_V logits at or above lo also copies
# them to a scratch row, each lane into its own column (slot j of lane i at j * BLOCK_V + i: deterministic, no
# atomics, no scan), and the rest of the search walks those few slots instead of V. A lane with more than SLOTS of them
# (rare: one per lane on average) leaves the search on the row, which is only slower.
PIVOTS = tl.constexpr(8)  # pivots per pass of the search
SLOTS = tl.constexpr(8)  # the scratch row's slots per lane


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


KEY_NEG_INF = tl.constexpr(-2139095041)  # the key of -inf (0xff800000 ^ 0x7fffffff, signed): below every logit


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


@triton.jit
def _combine_stats(stats_ptr, stride_sp, stride_sr, rows, row_mask, S1, scale, BLOCK_S: tl.constexpr):
    """Row max (0 when -inf), sum of exponentials (1 when 0) and argmax (greedy rows) from the split statistics."""
    s = tl.arange(0, BLOCK_S)
    mask = row_mask[:, None] & (s < S1)[None, :]
    offs = rows[:, None] * stride_sr + s[None, :]
    m_s = tl.load(stats_ptr + offs, mask=mask, other=-float("inf"))
    second = tl.load(stats_ptr + stride_sp + offs, mask=mask, other=0.0)
    m = tl.max(m_s, axis=1)
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    z = tl.sum(second * tl.exp2((m_s - m_safe[:, None]) * scale), axis=1)
    arg = tl.min(tl.where(mask & (m_s == m[:, None]), second.to(tl.int32, bitcast=True), INT32_MAX), axis=1)
    return m_safe, tl.where(z > 0.0, z, 1.0), arg.to(tl.int64)


@triton.jit
def _to_uniform(bits, OPEN: tl.constexpr):
    """32 random bits -> float32 uniform in [0, 1), or in (0, 1) when OPEN; multiples of 2**-24."""
    u = (bits >> 8).to(tl.float32)
    if OPEN:
        u = u + 0.5
    return u * UNIFORM_SCALE


@triton.jit
def _load_scores(row_ptr, offs, stride_v, mask, FROM_PROBS: tl.constexpr):
    """Scores at `offs` of one row as float32: logits with NaN -> -inf and +inf -> the largest float32 (-inf where
    `mask` is off), or probabilities clamped to [0, 1] (NaN -> 0; 0 where `mask` is off)."""
    if FROM_PROBS:
        x = tl.load(row_ptr + offs * stride_v, mask=mask, other=0.0).to(tl.float32)
        return tl.minimum(tl.where(x > 0.0, x, 0.0), 1.0)
    else:
        return _finite_logits(tl.load(row_ptr + offs * stride_v, mask=mask, other=-float("inf")))


@triton.jit
def _probs(x, m, z, scale, cut, FROM_PROBS: tl.constexpr, WARP: tl.constexpr):
    """p (or q) from :func:`_load_scores`' values: exp2((l - m) * scale) / z from logits (0 below the warpers' `cut`
    when WARP), probabilities as they are."""
    if FROM_PROBS:
        return x
    else:
        prob = tl.exp2((x - m) * scale) * (1.0 / z)
        if WARP:
            prob = tl.where(x >= cut, prob, 0.0)
        return prob


@triton.jit
def _load_probs(row_ptr, offs, stride_v, mask, m, z, scale, cut, FROM_PROBS: tl.constexpr, WARP: tl.constexpr):
    """p (or q) at `offs` of one row (0 where `mask` is off)."""
    return _probs(_load_scores(row_ptr, offs, stride_v, mask, FROM_PROBS), m, z, scale, cut, FROM_PROBS, WARP)


@triton.jit
def _gather_drafts(t, t_row, stride_tt, stride_tv, d_row, stride_dt, stride_dv, tokens_ptr, stride_xb, stride_xt, b,
                   V, Vd, k_b, greedy, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr):
    """The drafts x_t of positions `t` (-1 past K_b) and the target's and the draft's scores at them: inputs of the
    call, none of them written by launch 1, so that launch 2 can read them before it waits for launch 1."""
    decide = t < k_b
    x = tl.load(tokens_ptr + b * stride_xb + t * stride_xt, mask=decide, other=-1).to(tl.int64)
    gather = decide & (x >= 0) & (x < V)
    gather_q = gather & (x < Vd) & _splat(~greedy, t)
    l_p = _load_scores(t_row + t * stride_tt, x, stride_tv, gather, FROM_PROBS)
    l_q = l_p
    if HAS_DRAFT:
        l_q = _load_scores(d_row + t * stride_dt, x, stride_dv, gather_q, FROM_PROBS)
    return x, l_p, l_q


@triton.jit
def _pack(key, idx):
    """(key >= 0, idx) -> int64 that orders by key, then by lower idx."""
    bits = key.to(tl.int32, bitcast=True).to(tl.int64)
    return (bits << 32) | (idx.to(tl.int64) * -1 + INT32_MAX)


@triton.jit
def _write_row(out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, b, K, n, next_token,
               BLOCK_K: tl.constexpr):
    """tokens[b] = accepted drafts, the next token, then -1; num_accepted[b] = n."""
    for t0 in range(0, K + 1, BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K)
        x = tl.load(tokens_ptr + b * stride_xb + t * stride_xt, mask=t < n, other=0).to(tl.int64)
        val = tl.where(t < n, x, tl.where(t == n, next_token, -1))
        tl.store(out_ptr + b * stride_ob + t * stride_ot, val, mask=t <= K)
    tl.store(nacc_ptr + b, n)


@triton.jit
def _accept_prefix(t_row, stride_tt, stride_tv, d_row, stride_dt, stride_dv, tokens_ptr, stride_xb, stride_xt,
                   uniform_ptr, stride_ub, stride_ut, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp,
                   b, B, K, V, Vd, S1, k_b, greedy, scale, seed_b, row_key, x_first, lp_first, lq_first,
                   BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
                   GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr, MANY_K: tl.constexpr):
    """n = the first rejected position (K_b if none), row n's statistics, x_n, and whether q_n is one-hot at x_n:
    (n, m_p, z_p, cut_p, argmax p, m_q, z_q, cut_q, x_n, one_hot_n). With WARP the sums and cuts are the warped
    rows' (from :func:`_warp_cut_kernel`). Positions 0 .. BLOCK_K - 1 are decided from :func:`_gather_drafts`' values
    read before (outside the loop over K, which then holds nothing of them), later ones BLOCK_K at a time."""
    t = tl.arange(0, BLOCK_K)
    zero = (b * 0).to(tl.float32)  # (tensors: the running values change type nowhere)
    n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n = _accept_positions(
        t, x_first, lp_first, lq_first, k_b, zero, zero + 1.0, zero - float("inf"), b * 0, zero, zero + 1.0,
        zero - float("inf"), b * 0 - 1, b * 0, uniform_ptr, stride_ub, stride_ut, stats_ptr, stride_sp, stride_sr,
        cut_ptr, stride_cp, b, B, K, V, Vd, S1, k_b, greedy, scale, seed_b, row_key, BLOCK_K, BLOCK_S, FROM_PROBS,
        HAS_DRAFT, GIVEN_RANDOM, WARP)
    if MANY_K:  # (compiled only for K >= BLOCK_K: the usual K has no loop here, and no registers held for one)
        for t0 in range(BLOCK_K, K + 1, BLOCK_K):
            t = t0 + tl.arange(0, BLOCK_K)
            x, l_p, l_q = _gather_drafts(t, t_row, stride_tt, stride_tv, d_row, stride_dt, stride_dv, tokens_ptr,
                                         stride_xb, stride_xt, b, V, Vd, k_b, greedy, FROM_PROBS, HAS_DRAFT)
            n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n = _accept_positions(
                t, x, l_p, l_q, n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n, uniform_ptr, stride_ub,
                stride_ut, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, b, B, K, V, Vd, S1, k_b, greedy,
                scale, seed_b, row_key, BLOCK_K, BLOCK_S, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
    return n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n


@triton.jit
def _accept_positions(t, x, l_p, l_q, n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n,
                      uniform_ptr, stride_ub, stride_ut, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp,
                      b, B, K, V, Vd, S1, k_b, greedy, scale, seed_b, row_key,
                      BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, FROM_PROBS: tl.constexpr,
                      HAS_DRAFT: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr):
    """Positions `t` [BLOCK_K] of :func:`_accept_prefix`: drafts `x` and the scores at them (`l_p`, `l_q`, from
    :func:`_load_scores`); returns the running (n, row n's statistics, x_n, one_hot_n) updated."""
    decide = t < k_b
    gather = decide & (x >= 0) & (x < V)
    sampled = _splat(~greedy, t)
    gather_q = gather & (x < Vd) & sampled
    if FROM_PROBS:
        m_t = tl.zeros([BLOCK_K], tl.float32)
        z_t = m_t + 1.0
        arg_t = tl.zeros([BLOCK_K], tl.int64)
        mq_t = m_t
        zq_t = z_t
    else:
        m_t, z_t, arg_t = _combine_stats(stats_ptr, stride_sp, stride_sr, b * (K + 1) + t, t <= k_b, S1, scale,
                                         BLOCK_S)
        mq_t, zq_t, _ = _combine_stats(stats_ptr, stride_sp, stride_sr, B * (K + 1) + b * K + t, decide & sampled,
                                       S1, scale, BLOCK_S)
    ct_t = tl.full([BLOCK_K], -float("inf"), tl.float32)
    cq_t = ct_t
    if WARP:  # the warped rows' cuts and sums (written for every row of the cut launch's grid)
        rows_p = b * (K + 1) + t
        rows_q = B * (K + 1) + b * K + t
        warped_p = (t <= k_b) & sampled
        warped_q = decide & sampled & HAS_DRAFT
        ct_t = tl.load(cut_ptr + rows_p, mask=warped_p, other=-float("inf"))
        z_t = tl.where(warped_p, tl.load(cut_ptr + stride_cp + rows_p, mask=warped_p, other=1.0), z_t)
        cq_t = tl.load(cut_ptr + rows_q, mask=warped_q, other=-float("inf"))
        zq_t = tl.where(warped_q, tl.load(cut_ptr + stride_cp + rows_q, mask=warped_q, other=1.0), zq_t)
    p_x = _probs(l_p, m_t, z_t, scale, ct_t, FROM_PROBS, WARP)
    if HAS_DRAFT:
        q_x = tl.where(gather_q, _probs(l_q, mq_t, zq_t, scale, cq_t, FROM_PROBS, WARP), 0.0)
        # A draft that gives its own token no probability (-inf or NaN logits there, an id past its vocabulary)
        # is one-hot at x: accepted with probability p(x), the correction from p without x (exact for any x).
        one_hot_t = gather & ~(q_x > 0.0)
        q_x = tl.where(one_hot_t, 1.0, q_x)
    else:
        q_x = tl.where(gather, 1.0, 0.0)
        one_hot_t = gather
    if GIVEN_RANDOM:
        u = tl.load(uniform_ptr + b * stride_ub + t * stride_ut, mask=decide, other=0.0)
    else:
        zero = (t * 0).to(tl.uint32)
        bits, _, _, _ = philox(seed_b, zero, t.to(tl.uint32), zero + row_key.to(tl.uint32), zero)
        u = _to_uniform(bits, False)
    accepted = tl.where(greedy, x == arg_t, u * q_x < p_x) & gather
    n = tl.minimum(n, tl.min(tl.where(decide & ~accepted, t, K + 1), axis=0))
    here = t == n
    if tl.sum(here.to(tl.int32), axis=0) > 0:
        m_p = tl.sum(tl.where(here, m_t, 0.0), axis=0)
        z_p = tl.sum(tl.where(here, z_t, 0.0), axis=0)
        cut_p = tl.max(tl.where(here, ct_t, -float("inf")), axis=0)
        arg_p = tl.sum(tl.where(here, arg_t, 0), axis=0)
        m_q = tl.sum(tl.where(here, mq_t, 0.0), axis=0)
        z_q = tl.sum(tl.where(here, zq_t, 0.0), axis=0)
        cut_q = tl.max(tl.where(here, cq_t, -float("inf")), axis=0)
        x_n = tl.sum(tl.where(here, x, 0), axis=0)
        one_hot_n = tl.sum(tl.where(here & one_hot_t, 1, 0), axis=0).to(tl.int64)
    return n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n


# What a race draws from: the residual max(0, p - q), p alone, or uniform.
RACE_RESIDUAL = tl.constexpr(0)
RACE_P = tl.constexpr(1)
RACE_UNIFORM = tl.constexpr(2)


@triton.jit
def _race_dist(t_row, stride_tv, d_row, stride_dv, offs, mask, q_full, q_one_hot, x_n, Vd, m_p, z_p, cut_p, m_q, z_q,
               cut_q, scale, DIST: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
               WARP: tl.constexpr):
    """The raced distribution at `offs`, unnormalised: max(0, p - q), p, or 1; 0 where `mask` is off. q is the draft's
    row where `q_full`, one-hot at x_n where `q_one_hot` (tensors of one value each), else 0 (the bonus row)."""
    if DIST == RACE_UNIFORM:
        return tl.where(mask, 1.0, 0.0)
    p = _load_probs(t_row, offs, stride_tv, mask, m_p, z_p, scale, cut_p, FROM_PROBS, WARP)
    if DIST == RACE_RESIDUAL:
        q = tl.where((offs == x_n) & q_one_hot, 1.0, 0.0)
        if HAS_DRAFT:
            q_mask = mask & (offs < Vd) & q_full
            q += tl.where(q_mask, _load_probs(d_row, offs, stride_dv, q_mask, m_q, z_q, scale, cut_q, FROM_PROBS, WARP),
                          0.0)
        p = tl.maximum(p - q, 0.0)
    return tl.where(mask, p, 0.0)


@triton.jit
def _race_step(best, arg, mass, dist, e, offs, mask):
    """One tile of one lane set: a lane's key replaces its best only when strictly larger (its lowest id on ties)."""
    key = tl.where(mask, dist / e, -1.0)
    better = key > best
    return tl.where(better, key, best), tl.where(better, offs, arg), mass + dist


@triton.jit
def _race(t_row, stride_tv, d_row, stride_dv, noise_row, stride_ev, lo, hi, Vd, n, k_b, x_n, one_hot_n, m_p, z_p,
          cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, DIST: tl.constexpr, BLOCK_V: tl.constexpr,
          FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr):
    """The exponential race over ids [lo, hi) of row n (lo a multiple of BLOCK_V): (best key, its id, mass).

    A tile is four interleaved lane sets of BLOCK_V / 4 lanes: lane i of set j holds id start + 4i + j, so one Philox
    call per lane (group g = start / 4 + i) feeds the four ids 4g .. 4g+3, each output to its own set. The four sets
    have one shape and one layout: no output ever moves between threads (a [4, BLOCK_V / 4] tile would let the
    compiler spread a group over threads, and redo Philox in each). Every lane keeps its best key and id across the
    tiles; one reduction after the loop. The mass is that of the distribution raced."""
    LANES: tl.constexpr = BLOCK_V // RNG_GROUP
    i = tl.arange(0, LANES)
    four_i = i * RNG_GROUP
    best0 = tl.full([LANES], -1.0, tl.float32)
    best1 = best0
    best2 = best0
    best3 = best0
    arg0 = four_i + lo
    arg1 = arg0 + 1
    arg2 = arg0 + 2
    arg3 = arg0 + 3
    mass0 = tl.zeros([LANES], tl.float32)
    mass1 = mass0
    mass2 = mass0
    mass3 = mass0
    x_n32 = x_n.to(tl.int32)
    q_full = _splat((n < k_b) & (one_hot_n == 0), i)
    q_one_hot = _splat((n < k_b) & (one_hot_n != 0), i)
    for start in range(lo, hi, BLOCK_V):
        offs0 = four_i + start
        offs1 = offs0 + 1
        offs2 = offs0 + 2
        offs3 = offs0 + 3
        d0 = _race_dist(t_row, stride_tv, d_row, stride_dv, offs0, offs0 < hi, q_full, q_one_hot, x_n32, Vd, m_p,
                        z_p, cut_p, m_q, z_q, cut_q, scale, DIST, FROM_PROBS, HAS_DRAFT, WARP)
        d1 = _race_dist(t_row, stride_tv, d_row, stride_dv, offs1, offs1 < hi, q_full, q_one_hot, x_n32, Vd, m_p,
                        z_p, cut_p, m_q, z_q, cut_q, scale, DIST, FROM_PROBS, HAS_DRAFT, WARP)
        d2 = _race_dist(t_row, stride_tv, d_row, stride_dv, offs2, offs2 < hi, q_full, q_one_hot, x_n32, Vd, m_p,
                        z_p, cut_p, m_q, z_q, cut_q, scale, DIST, FROM_PROBS, HAS_DRAFT, WARP)
        d3 = _race_dist(t_row, stride_tv, d_row, stride_dv, offs3, offs3 < hi, q_full, q_one_hot, x_n32, Vd, m_p,
                        z_p, cut_p, m_q, z_q, cut_q, scale, DIST, FROM_PROBS, HAS_DRAFT, WARP)
        if GIVEN_RANDOM:
            e0 = tl.load(noise_row + offs0 * stride_ev, mask=offs0 < hi, other=1.0)
            e1 = tl.load(noise_row + offs1 * stride_ev, mask=offs1 < hi, other=1.0)
            e2 = tl.load(noise_row + offs2 * stride_ev, mask=offs2 < hi, other=1.0)
            e3 = tl.load(noise_row + offs3 * stride_ev, mask=offs3 < hi, other=1.0)
        else:
            g = (i + start // RNG_GROUP).to(tl.uint32)
            zero = g * 0
            r0, r1, r2, r3 = philox(seed_b, g, zero + n.to(tl.uint32), zero + row_key.to(tl.uint32), zero + 1)
            e0 = -tl.log(_to_uniform(r0, True))
            e1 = -tl.log(_to_uniform(r1, True))
            e2 = -tl.log(_to_uniform(r2, True))
            e3 = -tl.log(_to_uniform(r3, True))
        best0, arg0, mass0 = _race_step(best0, arg0, mass0, d0, e0, offs0, offs0 < hi)
        best1, arg1, mass1 = _race_step(best1, arg1, mass1, d1, e1, offs1, offs1 < hi)
        best2, arg2, mass2 = _race_step(best2, arg2, mass2, d2, e2, offs2, offs2 < hi)
        best3, arg3, mass3 = _race_step(best3, arg3, mass3, d3, e3, offs3, offs3 < hi)
    top = tl.maximum(tl.maximum(tl.max(best0, axis=0), tl.max(best1, axis=0)),
                     tl.maximum(tl.max(best2, axis=0), tl.max(best3, axis=0)))
    first = tl.minimum(tl.minimum(tl.min(tl.where(best0 == top, arg0, INT32_MAX), axis=0),
                                  tl.min(tl.where(best1 == top, arg1, INT32_MAX), axis=0)),
                       tl.minimum(tl.min(tl.where(best2 == top, arg2, INT32_MAX), axis=0),
                                  tl.min(tl.where(best3 == top, arg3, INT32_MAX), axis=0)))
    return top, first, tl.sum(mass0 + mass1 + mass2 + mass3, axis=0)


@triton.jit(do_not_specialize=["B", "K", "V", "Vd", "tiles", "S1", "S2", "temperature", "seed",
                               "stride_xb", "stride_xt", "stride_ub", "stride_ut", "stride_eb", "stride_ev",
                               "stride_sp", "stride_sr", "stride_cp", "stride_ob", "stride_ot"])
def _verify_kernel(
    target_ptr, stride_tb, stride_tt, stride_tv,  # [B, K+1, V] logits, or probabilities when FROM_PROBS
    draft_ptr, stride_db, stride_dt, stride_dv,  # [B, K, Vd] like the target, read when HAS_DRAFT
    tokens_ptr, stride_xb, stride_xt,  # [B, K] int32/int64 drafted tokens
    num_draft_ptr,  # [B] int, read when RAGGED
    temp_ptr,  # [B] float32, read when ROW_TEMP
    seed_ptr,  # [B] int64, read when ROW_SEED
    uniform_ptr, stride_ub, stride_ut,  # [B, K] float32 acceptance uniforms, read when GIVEN_RANDOM
    noise_ptr, stride_eb, stride_ev,  # [B, V] float32 exponential noise, read when GIVEN_RANDOM
    stats_ptr, stride_sp, stride_sr,  # [2, B*(K+1) + B*K, S1] float32 split statistics, read unless FROM_PROBS
    cut_ptr, stride_cp,  # [2, B*(K+1) + B*K] float32 warped rows' cuts and sums (contiguous rows), read when WARP
    ws_ptr,  # [>= B, 3] int64 workspace (best packed key, residual mass in 2**-40, programs done), zero between
    out_ptr, stride_ob, stride_ot,  # [B, K+1] int64 tokens
    nacc_ptr,  # [B] int64 number accepted
    B, K, V, Vd, tiles, S1, S2, temperature, seed,
    EPS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
    FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr,
    ROW_SEED: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr, PDL: tl.constexpr, MANY_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    k_b = _num_drafts(num_draft_ptr, b, K, RAGGED)
    temp, scale = _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP)
    greedy = temp == 0.0
    if ROW_SEED:
        seed_b = tl.load(seed_ptr + b)
        row_key = b * 0
    else:
        seed_b = seed
        row_key = b
    t_row = target_ptr + b * stride_tb
    d_row = draft_ptr + b * stride_db

    # 1. Acceptance: n, and the statistics of row n. The drafts and the scores at them are the call's inputs: they
    # are read first, and with PDL before waiting for the launches before (their statistics, cuts, the -1 start).
    x_first, lp_first, lq_first = _gather_drafts(tl.arange(0, BLOCK_K), t_row, stride_tt, stride_tv, d_row, stride_dt,
                                                 stride_dv, tokens_ptr, stride_xb, stride_xt, b, V, Vd, k_b, greedy,
                                                 FROM_PROBS, HAS_DRAFT)
    if PDL:
        gdc_wait()
    n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n = _accept_prefix(
        t_row, stride_tt, stride_tv, d_row, stride_dt, stride_dv, tokens_ptr, stride_xb, stride_xt,
        uniform_ptr, stride_ub, stride_ut, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, b, B, K, V, Vd, S1,
        k_b, greedy, scale, seed_b, row_key, x_first, lp_first, lq_first, BLOCK_K, BLOCK_S, FROM_PROBS, HAS_DRAFT,
        GIVEN_RANDOM, WARP, MANY_K)
    if greedy:
        if split == 0:
            _write_row(out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, b, K, n, arg_p,
                       BLOCK_K)
    else:
        # 2. The race over this program's split of row n.
        lo = (split * tiles * BLOCK_V).to(tl.int32)  # ids within a row fit 32 bits: fewer registers per element
        hi = tl.minimum(lo + tiles * BLOCK_V, V)
        p_row = t_row + n * stride_tt
        q_row = d_row + n * stride_dt
        noise_row = noise_ptr + b * stride_eb
        key, idx, mass = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, lo, hi, Vd, n, k_b, x_n,
                               one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, RACE_RESIDUAL,
                               BLOCK_V, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)

        # 3. Fold into the row's workspace; the last program of the row reads it back, resets it and writes.
        ws = ws_ptr + b * 3
        # The two data atomics are relaxed (in flight together); the counter's acq_rel orders them: the last program's
        # acquire sees every program's key and mass, and its relaxed reads-and-resets go out together too.
        tl.atomic_max(ws, _pack(tl.maximum(key, 0.0), idx), sem="relaxed")
        mass = tl.where(mass == mass, tl.minimum(mass, 4.0), 0.0)
        tl.atomic_add(ws + 1, (mass * MASS_SCALE).to(tl.int64), sem="relaxed")
        done = tl.atomic_add(ws + 2, 1, sem="acq_rel")
        if done == S2 - 1:
            packed = tl.atomic_xchg(ws, 0, sem="relaxed")
            total = tl.atomic_xchg(ws + 1, 0, sem="relaxed")
            tl.atomic_xchg(ws + 2, 0, sem="relaxed")
            next_token = ((packed & INT32_MAX) * -1 + INT32_MAX).to(tl.int64)  # (tensor first: the interpreter)
            if total <= EPS * MASS_SCALE:  # p equals q: draw from p; uniform when p has no mass either
                _, from_p, mass_p = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, 0, V, Vd, n, k_b,
                                          x_n, one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b, row_key,
                                          RACE_P, BLOCK_V, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
                next_token = from_p.to(tl.int64)
                if mass_p <= 0.0:
                    _, uniform_id, _ = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, 0, V, Vd, n,
                                             k_b, x_n, one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b,
                                             row_key, RACE_UNIFORM, BLOCK_V, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
                    next_token = uniform_id.to(tl.int64)
            next_token = tl.minimum(tl.maximum(next_token, 0), V - 1)
            _write_row(out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, b, K, n, next_token,
                       BLOCK_K)


def _seed_arg(seed: int) -> int:
    """Every int seed as a distinct value in [2**62, 2**63), so that Triton always types it int64."""
    return (seed % (1 << 62)) + (1 << 62)


_WORKSPACES: dict[tuple, torch.Tensor] = {}
# Outgrown workspaces are kept, never freed: a CUDA graph captured earlier still points at one, and a replay must not
# work on memory handed to someone else (24 bytes a row, and each growth at least doubles).
_OUTGROWN: list[torch.Tensor] = []
# The current stream's handle without building a torch.cuda.Stream (Triton's own launcher reads it the same way).
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or (
    lambda index: torch.cuda.current_stream(index).cuda_stream)


def _workspace(device: torch.device, batch: int) -> torch.Tensor:
    """Zeroed per-(device, stream) workspace that every launch leaves zeroed; grown (never freed) when B outgrows
    it."""
    if device.type == "cuda":
        stream = _raw_stream(device.index if device.index is not None else torch.cuda.current_device())
    else:
        stream = 0
    key = (device.type, device.index, stream)
    ws = _WORKSPACES.get(key)
    if ws is None or ws.shape[0] < batch:
        if ws is not None:
            _OUTGROWN.append(ws)
        ws = torch.zeros(max(batch, 64, 2 * (ws.shape[0] if ws is not None else 0)), 3, dtype=torch.int64,
                         device=device)
        _WORKSPACES[key] = ws
    return ws


# Programmatic dependent launch (sm_90+): launch 2 starts while the launch before it (launch 1, or the cut launch) runs,
# reads the call's inputs (the drafts, the scores at them) and then waits (griddepcontrol.wait) for that launch's
# results; launch 1 and the cut launch let it start at once (griddepcontrol.launch_dependents). It overlaps launch 2's
# start and its first dependent loads with the launch before. Off until a GPU run has timed it and run the tests with
# it (bench/device_check.sh times both): SPECSAMPLER_PDL=1, or set PDL = True here.
PDL = os.environ.get("SPECSAMPLER_PDL", "0") == "1"


@functools.cache
def _capability(index: int | None) -> tuple:
    return torch.cuda.get_device_capability(index)


def _pdl(device: torch.device, pdl: bool | None = None) -> bool:
    """Whether the launches of a call on `device` use programmatic dependent launch (`pdl`: force it, for offline
    compilation): CUDA, compute capability 9.0 or later, a Triton with grid dependency control, and PDL set."""
    if pdl is not None:
        return pdl
    return PDL and device.type == "cuda" and gdc_wait is not None and _capability(device.index)[0] >= 9


@functools.cache
def _multiprocessors(device_type: str, index: int | None) -> int:
    """SMs of a CUDA device (asked once); 1 for a CPU under the interpreter."""
    return torch.cuda.get_device_properties(index).multi_processor_count if device_type == "cuda" else 1


# Launch configuration, from the full H200 sweep (bench/sweep_config.py; bench/results/gpu-2026-11-26-run3, each
# launch alone as a CUDA graph, K = 4, V = 128256):
# - launch 1 in 4 KB tiles (2048 ids of 16 bits, 1024 of 32: 8 per thread) with 8 programs of 8 warps per SM; below one
#   row per SM (B = 1) 1024-wide tiles and 4 programs per SM. B = 64: bf16 52 us (1024-wide: 76), fp32 72 us
#   (2048-wide: 84); B = 256: bf16 188, fp32 274 (2048-wide: 290); B = 1: 3.0 us (2048-wide: 3.6).
# - launch 2's race in 2048-wide tiles with 2 programs per SM for 16-bit scores, 512-wide with 8 per SM for fp32.
#   B = 64: bf16 52 us (1024 x 4: 57), fp32 57 (1024 x 4: 76); B = 256: bf16 157 (1024 x 4: 198), fp32 185 (237).
#   B = 1: 8.2-8.7 us whatever the tiles (a chain of dependent loads and atomics, not the race).
GPU_BLOCK_V_STATS = 2048  # for 16-bit scores (4 KB); 32-bit ones use half
GPU_BLOCK_V_RACE = 2048  # for 16-bit scores; 32-bit ones use 512


def gpu_block_v(launch: str, itemsize: int, rows: int, sms: int) -> int:
    """The tile width of launch "stats" or "race" on a GPU, for `rows` rows of scores of `itemsize` bytes."""
    if launch == "stats":
        return min(GPU_BLOCK_V_STATS * 2 // itemsize, 1024 if rows < sms else 1 << 20)
    return GPU_BLOCK_V_RACE if itemsize <= 2 else 512


@functools.lru_cache(maxsize=1024)
def _launch_config(launch: str, device_type: str, index: int | None, rows: int, vocab: int, itemsize: int,
                   block_v: int | None, num_splits: int | None) -> tuple[int, int, int, int]:
    """(BLOCK_V, splits, tiles per split, num_warps) of launch "stats" or "race" over `rows` rows of `vocab` scores of
    `itemsize` bytes, computed once per shape; `block_v` / `num_splits` override the tile width and the splits.

    On a CPU (the interpreter) tiles are 8192 wide and there are about 4 programs in all."""
    on_gpu = device_type == "cuda"
    sms = _multiprocessors(device_type, index)
    if launch == "stats":
        per_sm, max_splits = (8 if rows >= sms else 4), BLOCK_S
    else:
        per_sm, max_splits = (2 if itemsize <= 2 else 8), 1 << 16
    if block_v is None:
        block_v = gpu_block_v(launch, itemsize, rows, sms) if on_gpu else 8192
    tiles = triton.cdiv(vocab, block_v)
    if num_splits is None:
        num_splits = triton.cdiv(per_sm * sms if on_gpu else 4, rows)
    num_splits = max(1, min(num_splits, tiles, max_splits))
    tiles_per_split = triton.cdiv(tiles, num_splits)
    return block_v, triton.cdiv(tiles, tiles_per_split), tiles_per_split, 8 if block_v >= 2048 else 4


# Triton's JITFunction.run re-derives the specialisation of every argument and compares every global the kernel
# reads, on each call: 25-45 us of host time per launch on the H200 machine (bench/results/gpu-2026-11-26-run1).
# After the first launch of a specialisation through it, later ones go straight to its compiled launcher
# (``CompiledKernel[grid]``: the call JITFunction.run ends with, launch hooks included), found by a key of what Triton
# specialises these kernels on and a call can change: dtypes, the 16-byte alignment of the tensors, the class (1, a
# multiple of 16, 64-bit) of the strides it specialises on, the constexprs, the device (each compiled kernel is loaded
# on one). Not under the interpreter.
FAST_LAUNCH = True
_COMPILED: dict[tuple, object] = {}


def _aligned(*tensors) -> tuple:
    return tuple([t.data_ptr() % 16 == 0 for t in tensors])


def _stride_class(*strides) -> tuple:
    """Per int: 1 if it is 1, + 2 if a multiple of 16, + 4 if it needs 64 bits (Triton types it int64)."""
    return tuple([(v == 1) + 2 * (v % 16 == 0) + 4 * (not -2147483648 <= v < 2147483648) for v in strides])


def _launch(kernel, grid, key, args, constexprs: dict, num_warps: int, device: torch.device,
            launch_pdl: bool = False) -> None:
    """kernel[grid](*args, **constexprs) on the tensors' device (Triton launches on the current one: a guard makes
    it theirs), through the compiled launcher of `key` once there is one; `launch_pdl`: as a programmatic dependent
    launch (a compile option: the compiled launcher keeps it, and the constexprs, hence the key, tell it apart)."""
    options = dict(num_warps=num_warps, launch_pdl=True) if launch_pdl else dict(num_warps=num_warps)
    if device.type != "cuda":
        kernel[grid](*args, **constexprs, **options)
    elif torch.cuda.current_device() != device.index:
        with torch.cuda.device(device.index):
            _launch_on_current(kernel, grid, key, args, constexprs, options, device.index)
    else:
        _launch_on_current(kernel, grid, key, args, constexprs, options, device.index)


def _launch_on_current(kernel, grid, key, args, constexprs: dict, options: dict, index: int) -> None:
    """The compiled launcher gets the tensors' addresses as ints: given a tensor, it calls ``data_ptr()`` and asks
    the driver (``cuPointerGetAttribute``) whether the address is a device one, for each of the 10-14 pointers, on
    every launch; the API has checked every tensor's device already."""
    entry = _COMPILED.get(key) if FAST_LAUNCH else None
    if entry is not None:
        compiled, pointers = entry
        args = list(args)
        for i in pointers:
            args[i] = args[i].data_ptr()
        compiled[(grid[0], grid[1], 1)](*args, *constexprs.values(), stream=_raw_stream(index))
    else:
        compiled = kernel[grid](*args, **constexprs, **options)
        _COMPILED[key] = (compiled, tuple([i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]))


def row_stats(target, draft, num_draft_tokens, temperature, block_v=None, num_splits=None, tokens=None,
              candidates=False, pdl=None):
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
        Let the next launch start early (programmatic dependent launch); None: as :data:`PDL` and the device decide.

    Returns
    -------
    tuple
        (stats [2, R, S1] float32, S1) with R = B*(K+1) + B*K: stats[0] the split maxima, stats[1] the split sums of
        exp((l - max) / T) on sampled rows and the split argmax (int32 bits; view as torch.int32) on greedy rows.
        With `candidates`, a third item: None, or [R, S1 * 4 * BLOCK_V] float32 candidates, with stats[2] (a third
        plane) the largest logit of each split they may have left out.
    """
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    vd = draft.shape[2] if draft is not None else 0
    rows = batch * k_plus_1 + batch * k
    device = target.device
    block_v, s1, tiles, num_warps = _launch_config("stats", device.type, device.index, rows, vocab, target.itemsize,
                                                   block_v, num_splits)
    cand = None
    if candidates and s1 * 4 * block_v * 8 <= vocab:
        cand = torch.empty(rows, s1 * 4 * block_v, dtype=torch.float32, device=device)
    stats = torch.empty(2 if cand is None else 3, rows, s1, dtype=torch.float32, device=device)
    d = draft if draft is not None else target
    row_temp = isinstance(temperature, torch.Tensor)
    # Draft rows only where some row samples (a float temperature of 0 needs none).
    with_drafts = draft is not None and (row_temp or temperature != 0.0)
    grid = (batch * k_plus_1 + (batch * k if with_drafts else 0), s1)
    nd = num_draft_tokens if num_draft_tokens is not None else target
    temp = temperature if row_temp else target
    constexprs = dict(BLOCK_V=block_v, RAGGED=num_draft_tokens is not None, ROW_TEMP=row_temp, FILL=tokens is not None,
                      CAND=cand is not None, PDL=_pdl(device, pdl))
    t_strides, d_strides = target.stride(), d.stride()
    key = (_row_stats_kernel, device.index, target.dtype, d.dtype, nd.dtype, *constexprs.values(),
           *_aligned(target, d, nd, temp), *_stride_class(*t_strides, *d_strides))
    args = (target, *t_strides, d, *d_strides, nd, temp, stats, rows * s1, s1, tokens if tokens is not None else stats,
            cand if cand is not None else stats, batch, k, vocab, vd, tiles, s1,
            0.0 if row_temp else float(temperature))
    _launch(_row_stats_kernel, grid, key, args, constexprs, num_warps, device)
    return (stats, s1, cand) if candidates else (stats, s1)


def warp_cuts(target, draft, num_draft_tokens, temperature, warp, stats, pdl=None):
    """Launch 1.5: every warped row's cut (the row keeps its logits >= cut) and the mass it keeps.

    Parameters
    ----------
    target, draft, num_draft_tokens, temperature
        As in :func:`row_stats`.
    warp : specsampler.torch_backend.Warp
        top_k (int or [B] int64), top_p (float or [B] float32), min_offset (float or [B] float32: T ln(min_p)).
    stats : tuple
        The output of :func:`row_stats` (with or without candidates).
    pdl : bool or None
        As in :func:`row_stats`.

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
    block_v = 1024  # 4 ids per thread with 8 warps: the pivots' per-lane counts and masses take 64 registers
    depth = min(SLOTS.value, triton.cdiv(vocab, block_v))
    scratch = torch.empty(grid_rows, depth * block_v, dtype=torch.float32, device=device)
    row_warp = any(isinstance(v, torch.Tensor) for v in warp)
    if row_warp:
        top_k, top_p, min_offset = (v if isinstance(v, torch.Tensor) else torch.full(
            (batch,), v, dtype=dtype, device=device) for v, dtype in zip(warp, (torch.int64, torch.float32,
                                                                              torch.float32), strict=True))
        scalars = (0, 1.0, 0.0)
    else:
        top_k = top_p = min_offset = target
        scalars = (int(warp.top_k), float(warp.top_p), float(warp.min_offset))
    d = draft if draft is not None else target
    nd = num_draft_tokens if num_draft_tokens is not None else target
    temp = temperature if row_temp else target
    constexprs = dict(BLOCK_V=block_v, BLOCK_S=BLOCK_S, RAGGED=num_draft_tokens is not None, ROW_TEMP=row_temp,
                      ROW_WARP=row_warp, CAND=cand is not None, PDL=_pdl(device, pdl))
    c = cand if cand is not None else stats_t
    t_strides, d_strides = target.stride(), d.stride()
    key = (_warp_cut_kernel, device.index, target.dtype, d.dtype, nd.dtype, *constexprs.values(),
           *_aligned(target, d, nd, temp, top_k, top_p, min_offset, stats_t, c, cuts, scratch),
           *_stride_class(*t_strides, *d_strides))
    args = (target, *t_strides, d, *d_strides, nd, temp, top_k, top_p, min_offset, stats_t, *stats_t.stride()[:2],
            c, c.stride(0), cuts, cuts.stride(0), scratch, scratch.stride(0), batch, k, vocab, vd, s1,
            cand.shape[1] if cand is not None else 0, 0.0 if row_temp else float(temperature), *scalars)
    _launch(_warp_cut_kernel, (grid_rows, 1), key, args, constexprs, 8, device)
    return cuts


def verify_rows(target, draft_tokens, draft, num_draft_tokens, temperature, seed, stats=None, uniforms=None,
                noise=None, block_v=None, num_splits=None, tokens=None, cuts=None, pdl=None):
    """Launch 2: acceptance, first rejection and the correction or bonus token of every row.

    Parameters
    ----------
    target : torch.Tensor
        [B, K+1, V] logits (with `stats` from :func:`row_stats`) or probabilities (``stats=None``).
    draft_tokens : torch.Tensor
        [B, K] int32/int64.
    draft : torch.Tensor or None
        [B, K, Vd] scores of the same kind as `target`; None for one-hot drafts.
    num_draft_tokens : torch.Tensor or None
        [B] int.
    temperature : float or torch.Tensor
        Float or [B] float32; 0 marks a greedy row (from probabilities: 1, every row sampled).
    seed : int or torch.Tensor
        Philox key: an int (the row index joins the counters) or [B] int64 per-row seeds.
    stats : tuple or None
        The output of :func:`row_stats` when `target` holds logits.
    uniforms, noise : torch.Tensor or None
        Test hook: [B, K] float32 uniforms and [B, V] float32 positive noise replacing Philox.
    block_v, num_splits : int or None
        Tile width and vocabulary splits per row; None picks them for the device.
    tokens : torch.Tensor or None
        [B, K+1] int64 contiguous output already set to -1 (by :func:`row_stats`); None allocates one at -1.
    cuts : torch.Tensor or None
        The output of :func:`warp_cuts` when the rows are warped.
    pdl : bool or None
        Launch as a programmatic dependent launch of the launch before (from logits only); None: as :data:`PDL` and
        the device decide.

    Returns
    -------
    tokens : torch.Tensor
        [B, K+1] int64, -1 padded.
    num_accepted : torch.Tensor
        [B] int64.
    """
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    device = target.device
    if not isinstance(temperature, torch.Tensor) and temperature == 0.0 and stats is not None:
        num_splits = 1  # greedy rows only: split 0 writes the row, there is no race to share
    block_v, s2, tiles, num_warps = _launch_config("race", device.type, device.index, batch, vocab, target.itemsize,
                                                   block_v, num_splits)
    if tokens is None:
        tokens = torch.full((batch, k_plus_1), -1, dtype=torch.int64, device=device)  # a row never written reads -1
    num_accepted = torch.empty(batch, dtype=torch.int64, device=device)
    ws = _workspace(device, batch)
    d = draft if draft is not None else target
    given = uniforms is not None
    if given and (uniforms.shape != (batch, k) or noise is None or noise.shape != (batch, vocab)):
        raise ValueError(f"uniforms must be [B, K] = {(batch, k)} and noise [B, V] = {(batch, vocab)}")
    u = uniforms if given else target
    e = noise if given else target
    stats_t, s1 = stats if stats is not None else (target, 1)
    row_temp = isinstance(temperature, torch.Tensor)
    row_seed = isinstance(seed, torch.Tensor)
    nd = num_draft_tokens if num_draft_tokens is not None else target
    temp = temperature if row_temp else target
    seeds = seed if row_seed else target
    pdl = stats is not None and _pdl(device, pdl)  # (from probabilities there is no launch before to overlap)
    constexprs = dict(EPS=RESIDUAL_EPS, BLOCK_V=block_v, BLOCK_K=BLOCK_K, BLOCK_S=BLOCK_S, FROM_PROBS=stats is None,
                      HAS_DRAFT=draft is not None, RAGGED=num_draft_tokens is not None, ROW_TEMP=row_temp,
                      ROW_SEED=row_seed, GIVEN_RANDOM=given, WARP=cuts is not None, PDL=pdl,
                      MANY_K=k_plus_1 > BLOCK_K)
    c = cuts if cuts is not None else stats_t
    t_strides, d_strides = target.stride(), d.stride()
    key = (_verify_kernel, device.index, target.dtype, d.dtype, draft_tokens.dtype, nd.dtype, *constexprs.values(),
           *_aligned(target, d, draft_tokens, nd, temp, seeds, u, e, stats_t, c),
           *_stride_class(*t_strides, *d_strides))
    args = (target, *t_strides, d, *d_strides, draft_tokens, *draft_tokens.stride(), nd, temp, seeds,
            u, *u.stride()[:2], e, *e.stride()[:2], stats_t, *stats_t.stride()[:2], c, c.stride(0),
            ws, tokens, k_plus_1, 1, num_accepted,
            batch, k, vocab, d.shape[2], tiles, s1, s2, 0.0 if row_temp else float(temperature),
            0 if row_seed else _seed_arg(seed))
    _launch(_verify_kernel, (batch, s2), key, args, constexprs, num_warps, device, launch_pdl=pdl)
    return tokens, num_accepted
