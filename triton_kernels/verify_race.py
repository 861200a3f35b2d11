"""The exponential race of launch 2 (``verify_kernel._verify_kernel``): the next token drawn from a residual row split
across programs, folded into a per-row workspace, and its fallbacks.

The key of id x is r(x) / E_x with E_x ~ Exp(1); argmax of the keys is a draw from r / sum(r) with no normalisation
and no prefix sum. r is max(0, p_n - q_n) (token verification's residual), p_n (the bonus row, and the fallback),
1 (uniform) or max(0, w p_n - q_n) (block verification). Each lane keeps its best key and id across the BLOCK_V
tiles of its program's split [lo, hi); the program reduces once and folds its best (key, id), packed in an int64 so
that a larger key and then a lower id wins, and its share of sum(r) (fixed point, 2**-40: exact in any order) into
a workspace slot of 3 int64 (best packed key, mass, programs done) with relaxed atomics, ordered by the row's acq_rel
counter. Only when sum(r) <= RESIDUAL_EPS (p equals q up to rounding) does the row's last program race p_n over the
whole row, and only when p_n has no mass at all 1 / E_x (uniform): the fallbacks cost nothing on the rows that do
not need them, and need no host synchronisation.

Randomness: E_x = -ln u from Philox keyed by the seed (``jit_helpers._philox_key``): one Philox call (10 rounds) gives
the four uniforms of ids 4g .. 4g+3 (counters: group g, position n, row, stream 1), so the numbers of an id do not
depend on the tile width or the splits. The testing entry replaces them with given noise [B, V] (GIVEN_RANDOM).

Bytes per program: its split of one row pair, (hi - lo) * s of p and of q where q is read (s the element size); the
fallback races read the whole row of p again (the last program only). Workspace: 24 bytes a slot, touched with
atomics, zero again after every launch.

References: the exponential race (Gumbel-max with exponentials: argmax r(x) / E_x); Salmon et al. 2011 (Philox);
Triton's tutorial 04-low-memory-dropout (in-kernel Philox).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.random import philox

from .jit_helpers import INT32_MAX, RNG_GROUP, _splat, _to_uniform
from .verify_positions import _load_probs

MASS_SCALE = tl.constexpr(1099511627776.0)  # 2**40: the residual mass is summed in fixed point (exact, any order)
WS_SLOT = tl.constexpr(3)  # int64 words per workspace slot: best packed key, mass in 2**-40, programs done (slot 0)


@triton.jit
def _pack(key, idx):
    """(key >= 0, idx) -> int64 that orders by key, then by lower idx."""
    bits = key.to(tl.int32, bitcast=True).to(tl.int64)
    return (bits << 32) | (idx.to(tl.int64) * -1 + INT32_MAX)


@triton.jit
def _unpack_id(packed):
    """The id of a packed (key, id) (:func:`_pack`)."""
    return ((packed & INT32_MAX) * -1 + INT32_MAX).to(tl.int64)  # (tensor first: the interpreter)


# What a race draws from: the residual max(0, p - q), p alone, uniform, or block verification's residual
# max(0, w p - q).
RACE_RESIDUAL = tl.constexpr(0)
RACE_P = tl.constexpr(1)
RACE_UNIFORM = tl.constexpr(2)
RACE_WEIGHTED = tl.constexpr(3)


@triton.jit
def _race_dist(offs, mask, args, DIST: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
               WARP: tl.constexpr):
    """The raced distribution at `offs`, unnormalised: max(0, p - q), p, 1, or max(0, w p - q) (RACE_WEIGHTED); 0 where
    `mask` is off. `args`: (t_row, stride_tv, d_row, stride_dv, q_full, q_one_hot, x_n, Vd, m_p, z_p, cut_p, m_q, z_q,
    cut_q, scale, w); q is the draft's row where `q_full`, one-hot at x_n where `q_one_hot` (tensors of one value
    each), else 0 (the bonus row). (The constexprs stay out of the tuple: in one, the compiler takes them for runtime
    values.)"""
    t_row, stride_tv, d_row, stride_dv, q_full, q_one_hot, x_n, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, w = args
    if DIST == RACE_UNIFORM:
        return tl.where(mask, 1.0, 0.0)
    p = _load_probs(t_row, offs, stride_tv, mask, m_p, z_p, scale, cut_p, FROM_PROBS, WARP)
    if DIST == RACE_WEIGHTED:
        p = p * w
    if DIST != RACE_P:  # (RACE_RESIDUAL, RACE_WEIGHTED)
        q = tl.where((offs == x_n) & q_one_hot, 1.0, 0.0)
        if HAS_DRAFT:
            q_mask = mask & (offs < Vd) & q_full
            q += tl.where(q_mask, _load_probs(d_row, offs, stride_dv, q_mask, m_q, z_q, scale, cut_q, FROM_PROBS, WARP),
                          0.0)
        p = tl.maximum(p - q, 0.0)
    return tl.where(mask, p, 0.0)


@triton.jit
def _race_bits(i, start, pos, seed_b, row_key, GIVEN_RANDOM: tl.constexpr):
    """The four Philox outputs of the lanes `i` of the tile at `start` (group start / 4 + i, stream 1 at row position
    `pos`); zeros with GIVEN_RANDOM (the noise row replaces them)."""
    g = (i + start // RNG_GROUP).to(tl.uint32)
    zero = g * 0
    if GIVEN_RANDOM:
        r0 = zero
        r1 = zero
        r2 = zero
        r3 = zero
    else:
        r0, r1, r2, r3 = philox(seed_b, g, zero + pos.to(tl.uint32), zero + row_key.to(tl.uint32), zero + 1)
    return r0, r1, r2, r3


@triton.jit
def _race_exp(bits, offs, hi, noise_row, stride_ev, GIVEN_RANDOM: tl.constexpr):
    """E = -ln u of the Philox `bits` (u in (0, 1)), or the noise row's value with GIVEN_RANDOM (1 past `hi`)."""
    if GIVEN_RANDOM:
        e = tl.load(noise_row + offs * stride_ev, mask=offs < hi, other=1.0)
    else:
        e = -tl.log(_to_uniform(bits, True))
    return e


@triton.jit
def _race_step(best, arg, mass, dist, e, offs, mask):
    """One tile of one lane set: a lane's key replaces its best only when strictly larger (its lowest id on ties)."""
    key = tl.where(mask, dist / e, -1.0)
    better = key > best
    return tl.where(better, key, best), tl.where(better, offs, arg), mass + dist


@triton.jit
def _race_set(best, arg, mass, offs, hi, bits, noise_row, stride_ev, dist_args, DIST_FN: tl.constexpr,
              DIST: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr, GIVEN_RANDOM: tl.constexpr,
              WARP: tl.constexpr):
    """One lane set of a tile raced in one go (:func:`_race_tiles` with SETS_IN_TURN): its distribution, its E, its
    step."""
    dist = DIST_FN(offs, offs < hi, dist_args, DIST, FROM_PROBS, HAS_DRAFT, WARP)
    e = _race_exp(bits, offs, hi, noise_row, stride_ev, GIVEN_RANDOM)
    return _race_step(best, arg, mass, dist, e, offs, offs < hi)


@triton.jit
def _race_tiles(dist_args, noise_row, stride_ev, lo, hi, pos, seed_b, row_key, DIST_FN: tl.constexpr,
                DIST: tl.constexpr, BLOCK_V: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
                GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr, SETS_IN_TURN: tl.constexpr):
    """The exponential race over ids [lo, hi) (lo a multiple of BLOCK_V) of the unnormalised distribution
    DIST_FN(offs, mask, dist_args, DIST, FROM_PROBS, HAS_DRAFT, WARP) (0 where `mask` is off; :func:`_race_dist`, or
    the tree kernel's numerator), its exponentials from Philox stream 1 at row position `pos` (or the noise row):
    (best key, its id, mass).

    A tile is four interleaved lane sets of BLOCK_V / 4 lanes: lane i of set j holds id start + 4i + j, so one Philox
    call per lane (group g = start / 4 + i) feeds the four ids 4g .. 4g+3, each output to its own set. The four sets
    have one shape and one layout: no output ever moves between threads (a [4, BLOCK_V / 4] tile would let the
    compiler spread a group over threads, and redo Philox in each). Every lane keeps its best key and id across the
    tiles; one reduction after the loop. The mass is that of the distribution raced.

    The order within a tile only changes registers (compile_offline*.py): SETS_IN_TURN races each set right after its
    distribution (the tree's numerator holds a loop over the removed ids, and four distributions live across those
    loops cost it up to 13 registers); else the four distributions first, then Philox (verify's launch 2: it spills
    with the sets in turn)."""
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
    for start in range(lo, hi, BLOCK_V):
        offs0 = four_i + start
        offs1 = offs0 + 1
        offs2 = offs0 + 2
        offs3 = offs0 + 3
        if SETS_IN_TURN:
            r0, r1, r2, r3 = _race_bits(i, start, pos, seed_b, row_key, GIVEN_RANDOM)
            best0, arg0, mass0 = _race_set(best0, arg0, mass0, offs0, hi, r0, noise_row, stride_ev, dist_args, DIST_FN,
                                           DIST, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
            best1, arg1, mass1 = _race_set(best1, arg1, mass1, offs1, hi, r1, noise_row, stride_ev, dist_args, DIST_FN,
                                           DIST, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
            best2, arg2, mass2 = _race_set(best2, arg2, mass2, offs2, hi, r2, noise_row, stride_ev, dist_args, DIST_FN,
                                           DIST, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
            best3, arg3, mass3 = _race_set(best3, arg3, mass3, offs3, hi, r3, noise_row, stride_ev, dist_args, DIST_FN,
                                           DIST, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
        else:
            d0 = DIST_FN(offs0, offs0 < hi, dist_args, DIST, FROM_PROBS, HAS_DRAFT, WARP)
            d1 = DIST_FN(offs1, offs1 < hi, dist_args, DIST, FROM_PROBS, HAS_DRAFT, WARP)
            d2 = DIST_FN(offs2, offs2 < hi, dist_args, DIST, FROM_PROBS, HAS_DRAFT, WARP)
            d3 = DIST_FN(offs3, offs3 < hi, dist_args, DIST, FROM_PROBS, HAS_DRAFT, WARP)
            r0, r1, r2, r3 = _race_bits(i, start, pos, seed_b, row_key, GIVEN_RANDOM)
            e0 = _race_exp(r0, offs0, hi, noise_row, stride_ev, GIVEN_RANDOM)
            e1 = _race_exp(r1, offs1, hi, noise_row, stride_ev, GIVEN_RANDOM)
            e2 = _race_exp(r2, offs2, hi, noise_row, stride_ev, GIVEN_RANDOM)
            e3 = _race_exp(r3, offs3, hi, noise_row, stride_ev, GIVEN_RANDOM)
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


@triton.jit
def _race(t_row, stride_tv, d_row, stride_dv, noise_row, stride_ev, lo, hi, Vd, n, k_b, x_n, one_hot_n, m_p, z_p,
          cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, w, DIST: tl.constexpr, BLOCK_V: tl.constexpr,
          FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr):
    """The exponential race (:func:`_race_tiles`) over ids [lo, hi) of row n (lo a multiple of BLOCK_V) of the
    distribution DIST (:func:`_race_dist`): (best key, its id, mass)."""
    lanes = tl.arange(0, BLOCK_V // RNG_GROUP)
    q_full = _splat((n < k_b) & (one_hot_n == 0), lanes)
    q_one_hot = _splat((n < k_b) & (one_hot_n != 0), lanes)
    dist_args = (t_row, stride_tv, d_row, stride_dv, q_full, q_one_hot, x_n.to(tl.int32), Vd, m_p, z_p, cut_p, m_q,
                 z_q, cut_q, scale, w)
    return _race_tiles(dist_args, noise_row, stride_ev, lo, hi, n, seed_b, row_key, _race_dist, DIST, BLOCK_V,
                       FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP, False)


@triton.jit
def _fold(slot, key, idx, mass):
    """Fold a program's race result (best key, its id, the mass raced) into a workspace slot [3] int64 (best packed
    key, mass in 2**-40). Relaxed: the two atomics are in flight together; the row's counter orders them."""
    tl.atomic_max(slot, _pack(tl.maximum(key, 0.0), idx), sem="relaxed")
    mass = tl.where(mass == mass, tl.minimum(mass, 4.0), 0.0)
    tl.atomic_add(slot + 1, (mass * MASS_SCALE).to(tl.int64), sem="relaxed")


@triton.jit
def _fallback_draw(next_token, total, p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, V, Vd, n, k_b, x_n,
                   one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, EPS: tl.constexpr,
                   BLOCK_V: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
                   GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr):
    """The last program's next token: the race's winner `next_token`, or, where the raced mass `total` (in 2**-40) is
    at most EPS (p equals q), a race over p_n alone (the whole row), and a uniform one when p_n has no mass either;
    clamped to [0, V)."""
    if total <= EPS * MASS_SCALE:  # p equals q: draw from p; uniform when p has no mass either
        _, from_p, mass_p = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, 0, V, Vd, n, k_b,
                                  x_n, one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, 1.0,
                                  RACE_P, BLOCK_V, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
        next_token = from_p.to(tl.int64)
        if mass_p <= 0.0:
            _, uniform_id, _ = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, 0, V, Vd, n,
                                     k_b, x_n, one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b,
                                     row_key, 1.0, RACE_UNIFORM, BLOCK_V, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
            next_token = uniform_id.to(tl.int64)
    return tl.minimum(tl.maximum(next_token, 0), V - 1)
