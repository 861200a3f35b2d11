"""Token-tree verification, ``_tree_kernel`` (after launch 1 and, with warpers, the cut launch): the deepest accepted
path of every row's tree of drafted candidates, then one more token (the oracle is ``specsampler.torch_tree``).

Algorithm (SpecInfer's multi-step speculative sampling; Miao et al. 2023, arXiv 2305.09781). Grid (B,): ONE program
per row walks the row's nodes in order (topological: a node's children come after it). At the current node (the
root first) with p its warped target distribution and q its children's draft distribution, the residual after any
sequence of sibling rejections is

    r(y) = max(p(y) - c q(y), 0) / Z  for y not in R,  0 on R,

with a scalar c (0 at a fresh node), a set R of removed ids and Z the sum of the numerator (1 at a fresh node), so no
residual row is ever materialised:
- child x (node i, a child of the current node, token in [0, V), depth within max_depth) is accepted iff
  u_i * q(x) < r(x), u_i node i's uniform; q(x) = 1 for a point-mass child (no draft logits, or a draft that gives x
  no probability: -inf, NaN, x >= Vd). Greedy rows: x == argmax p (launch 1's argmax), lowest index on ties;
- a point-mass rejection: R += {x}, Z -= numerator(x) (no pass over the vocabulary);
- an i.i.d. rejection: c += Z, Z = the sum of the new numerator (one pass over the node's p and q rows), computed
  only when a later sibling is tried (the final race sums the mass itself);
- either is skipped when the new Z / old Z <= RESIDUAL_EPS (the oracle keeps r: rounding; for a pending i.i.d.
  rejection the race decides it, and races again over the residual before it in that rare case);
- an accepted child becomes the current node: c = 0, R empty, Z = 1, its own p and q statistics;
- the next token: the exponential race argmax num(y) / E_y over the current numerator (one pass over p and, when
  c > 0, q), E_y from Philox as verify's race (or the noise hook); when the numerator has no mass at all (a row of
  -inf), a uniform race over [0, V). Greedy rows emit argmax p of the current node.
R is held in registers ([BLOCK_R] ids, BLOCK_R >= N): each tile of a pass clears the removed ids with one compare per
removed id (point-mass trees remove at most a node's children).

Randomness laid out as verify's token verification: node i's acceptance uniform is Philox stream 0 at position i, the
race Philox stream 1 at position cur + 1 (the target row raced), ids 4g .. 4g+3 from group g; an int seed with the row
index, or [B] per-row seeds; but keyed by the seed XOR STREAM_KEYS[STREAM_TREE] (``constants``: verify_tree's numbers
are independent of verify's and sample's on the same seed). The testing entry replaces them with uniforms [B, N] and
noise [B, V], which the oracle accepts too (a chain then gives verify's tokens).

A token outside [0, V) ends its row's nodes there, as a smaller num_nodes would: that node and every later one of the
row are never tried (the oracle: ``torch_tree.nodes_in_range``).

Bytes (s the scores' element size): launch 1 reads every target row t <= num_nodes_b and draft row t < num_nodes_b
once (at most B*(N+1)*V*s + B*N*Vd*s) and writes 8 * rows * S1 of statistics; the cut launch (warpers only) as in
``cut_kernel``. This launch reads per row the statistics of the nodes it visits (8 * S1 each), 2 ints and up to 2
gathered scores per node walked, one (V + Vd) * s pass per i.i.d. rejection that a sibling follows, one more for the
race (V * s at a node with c = 0, (V + Vd) * s after a rejection; a second only where the residual has at most
RESIDUAL_EPS of the mass or none: then uniform), and writes 8 * (2D + 2) bytes a row. A chain reads what verify's
token verification reads: launch 1, then one row (pair) for the race. No [B, N+1, V]
tensor is allocated, there is no host synchronisation when `max_depth` is given, and no workspace.

Cost of the one-program-per-row design, and what a split design would change: B programs only, so at small B most
SMs idle, and each i.i.d. rejection is a dependent full-row pass in one program (an i.i.d. tree with k siblings
rejected at each of d levels walks k*d + 1 rows serially). A split design would run each pass over S splits of the
row (as verify's race: per-split partial sums and race winners folded into a per-row workspace with atomics), at the
price of a grid-wide dependency between sibling decisions (a split's Z is needed before the next sibling's test):
either one launch per tree level / sibling round, or the last program of the row continuing the walk after each
fold. Z is already deferred after an i.i.d. rejection until a later sibling needs it; the passes left are those of
nodes with several i.i.d. children rejected in turn, which a split design would run in parallel over the row.

Compiled offline for sm_90 (bench/compile_offline_tree.py; bench/results/compile_offline_tree_warps_triton*.txt): 8
warps, BLOCK_V 1024, 64-101 registers, no spill and no barrier inside a vocabulary loop with Triton 3.6 and 3.9 (at 4
warps 92-128 registers, and 3.6 spilled outside the loops in the warped variant: compile_offline_tree_triton*.txt).
The walk over the nodes holds the per-node reductions (statistics, the removed ids): a few barriers a node.

References: Miao et al. 2023 (SpecInfer, arXiv 2305.09781); Leviathan et al. 2023 (arXiv 2211.17192);
``verify_kernel`` (Philox layout, the exponential race); Salmon et al. 2011 (Philox).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.random import philox

from . import launching
from .constants import BLOCK_S, RESIDUAL_EPS, STREAM_TREE
from .jit_helpers import (
    INT32_MAX,
    RNG_GROUP,
    _finite_logits,
    _num_drafts,
    _philox_key,
    _scaled_temperature,
    _splat,
    _to_uniform,
)
from .verify_race import RACE_RESIDUAL, RACE_UNIFORM, _race_tiles

BLOCK_D = tl.constexpr(16)  # output positions written per store
GPU_BLOCK_V = 1024  # one program per row: 1024-wide tiles, 8 warps (not yet timed on a GPU)
TREE_STREAM = tl.constexpr(STREAM_TREE)  # verify_tree's own random stream of a seed (``constants``)
GPU_WARPS = 8  # (at 4: 92-128 registers, and Triton 3.6 spilled outside the loops; at 8: 64-101, none)


@triton.jit
def _scalar_load(ptr, valid, other):
    """*ptr where `valid`, else `other`, as a scalar (loaded through a 2-lane tensor: the interpreter needs tensor
    masks)."""
    lane = tl.arange(0, 2)
    return tl.max(tl.load(ptr + lane * 0, mask=_splat(valid, lane), other=other), axis=0)


@triton.jit
def _node_stats(stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, row, valid, sampled, S1, scale,
                BLOCK_S: tl.constexpr, WARP: tl.constexpr):
    """(max (0 when -inf), sum of exponentials (1 when 0; the kept mass on warped rows), the warpers' cut (-inf: none),
    argmax) of launch-1 row `row` from its split statistics (and the cut launch's cut and kept mass)."""
    s = tl.arange(0, BLOCK_S)
    mask = (s < S1) & _splat(valid, s)
    m_s = tl.load(stats_ptr + row * stride_sr + s, mask=mask, other=-float("inf"))
    second = tl.load(stats_ptr + stride_sp + row * stride_sr + s, mask=mask, other=0.0)
    m = tl.max(m_s, axis=0)
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    z = tl.sum(second * tl.exp2((m_s - m_safe) * scale), axis=0)
    arg = tl.min(tl.where(mask & (m_s == m), second.to(tl.int32, bitcast=True), INT32_MAX), axis=0)
    z = tl.where(z > 0.0, z, 1.0)
    cut = m_safe * 0.0 - float("inf")
    if WARP:
        warped = valid & sampled
        cut = _scalar_load(cut_ptr + row, warped, -float("inf"))
        z = tl.where(warped, _scalar_load(cut_ptr + stride_cp + row, warped, 1.0), z)
    return m_safe, z, cut, arg.to(tl.int64)


@triton.jit
def _prob(x, m, z, scale, cut, WARP: tl.constexpr):
    """p from finite logits `x`: exp2((x - m) * scale) / z, 0 below the warpers' `cut`."""
    prob = tl.exp2((x - m) * scale) * (1.0 / z)
    if WARP:
        prob = tl.where(x >= cut, prob, 0.0)
    return prob


@triton.jit
def _numerator(t_row, stride_tv, d_row, stride_dv, offs, mask, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, c,
               removed, slots, n_removed, HAS_DRAFT: tl.constexpr, WARP: tl.constexpr, DROP: tl.constexpr):
    """max(p - c q, 0) at `offs`: 0 where `mask` is off, and with DROP on the `n_removed` ids of `removed`
    [BLOCK_R]."""
    p = _prob(_finite_logits(tl.load(t_row + offs * stride_tv, mask=mask, other=-float("inf"))), m_p, z_p, scale,
              cut_p, WARP)
    if HAS_DRAFT:  # (c = 0 at a fresh node: q is not read)
        q_mask = mask & (offs < Vd) & _splat(c > 0.0, offs)
        q = _prob(_finite_logits(tl.load(d_row + offs * stride_dv, mask=q_mask, other=-float("inf"))), m_q, z_q,
                  scale, cut_q, WARP)
        p = tl.maximum(p - c * tl.where(q_mask, q, 0.0), 0.0)
    keep = mask
    if DROP:
        for j in range(0, n_removed):
            keep = keep & (offs != tl.sum(tl.where(slots == j, removed, 0), axis=0))
    return tl.where(keep, p, 0.0)


@triton.jit
def _mass(t_row, stride_tv, d_row, stride_dv, V, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, c, removed, slots,
          n_removed, BLOCK_V: tl.constexpr, HAS_DRAFT: tl.constexpr, WARP: tl.constexpr):
    """Z: the sum of :func:`_numerator` over the row (per-lane sums, one reduction after the loop), the removed ids'
    share taken off after it from their gathered scores (a reduction over the removed ids per tile costs a block
    barrier there)."""
    lanes = tl.arange(0, BLOCK_V)
    acc = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + lanes
        acc += _numerator(t_row, stride_tv, d_row, stride_dv, offs, offs < V, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q,
                          scale, c, removed, slots, n_removed, HAS_DRAFT, WARP, False)
    total = tl.sum(acc, axis=0)
    pair = tl.arange(0, 2)
    for j in range(0, n_removed):
        y = tl.sum(tl.where(slots == j, removed, 0), axis=0) + pair * 0  # (a 2-lane gather: the interpreter)
        gone = _numerator(t_row, stride_tv, d_row, stride_dv, y, pair == 0, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q,
                          scale, c, removed, slots, n_removed, HAS_DRAFT, WARP, False)
        total -= tl.sum(gone, axis=0)
    return tl.maximum(total, 0.0)


@triton.jit
def _race_numerator(offs, mask, args, DIST: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
                    WARP: tl.constexpr):
    """A tree race's distribution at `offs` (``verify_race._race_tiles``): :func:`_numerator` without the removed ids
    (RACE_RESIDUAL), or 1 everywhere (RACE_UNIFORM); 0 where `mask` is off. `args`: (t_row, stride_tv, d_row,
    stride_dv, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, c, removed, slots, n_removed). FROM_PROBS is unused (the
    tree reads logits)."""
    t_row, stride_tv, d_row, stride_dv, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, c, removed, slots, n_removed = args
    if DIST == RACE_UNIFORM:
        return tl.where(mask, 1.0, 0.0)
    return _numerator(t_row, stride_tv, d_row, stride_dv, offs, mask, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, c,
                      removed, slots, n_removed, HAS_DRAFT, WARP, True)


@triton.jit
def _race(t_row, stride_tv, d_row, stride_dv, noise_row, stride_ev, V, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale,
          c, removed, slots, n_removed, seed_b, row_key, pos, DIST: tl.constexpr, BLOCK_V: tl.constexpr,
          HAS_DRAFT: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr):
    """(winner id, mass) of the exponential race over the numerator (RACE_RESIDUAL) or 1 everywhere (RACE_UNIFORM) of
    the whole row: verify's race (``verify_race._race_tiles``: its lane sets and Philox layout, stream 1 at position
    `pos`), so the ids get the same numbers whatever the tile width; its lane sets raced in turn (SETS_IN_TURN: the
    numerator loops over the removed ids)."""
    dist_args = (t_row, stride_tv, d_row, stride_dv, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, c, removed, slots,
                 n_removed)
    _, first, mass = _race_tiles(dist_args, noise_row, stride_ev, 0, V, pos, seed_b, row_key, _race_numerator, DIST,
                                 BLOCK_V, False, HAS_DRAFT, GIVEN_RANDOM, WARP, True)
    return first.to(tl.int64), mass


@triton.jit
def _uniform(uniform_ptr, stride_ub, stride_un, b, i, seed_b, row_key, GIVEN_RANDOM: tl.constexpr):
    """Node i's acceptance uniform: verify's (Philox stream 0 at position i), or the hook's u[b, i]."""
    if GIVEN_RANDOM:
        u = tl.load(uniform_ptr + b * stride_ub + i * stride_un)
    else:
        lane = tl.arange(0, 2)
        zero = (lane * 0).to(tl.uint32)
        bits, _, _, _ = philox(seed_b, zero, zero + i.to(tl.uint32), zero + row_key.to(tl.uint32), zero)
        u = tl.max(_to_uniform(bits, False), axis=0)
    return u


@triton.jit(do_not_specialize=["B", "N", "V", "Vd", "D", "S1", "temperature", "seed", "stride_xb", "stride_xn",
                               "stride_ab", "stride_an", "stride_ub", "stride_un", "stride_eb", "stride_ev",
                               "stride_sp", "stride_sr", "stride_cp", "stride_ob", "stride_od", "stride_pb",
                               "stride_pd"])
def _tree_kernel(
    target_ptr, stride_tb, stride_tn, stride_tv,  # [B, N+1, V] logits
    draft_ptr, stride_db, stride_dn, stride_dv,  # [B, N+1, Vd] logits, read when HAS_DRAFT (row N never)
    nodes_ptr, stride_xb, stride_xn,  # [B, N] int32/int64 node tokens
    parents_ptr, stride_ab, stride_an,  # [B, N] int32/int64 node parents in [-1, i)
    num_nodes_ptr,  # [B] int64, read when RAGGED
    temp_ptr,  # [B] float32, read when ROW_TEMP
    seed_ptr,  # [B] int64, read when ROW_SEED
    uniform_ptr, stride_ub, stride_un,  # [B, N] float32 acceptance uniforms, read when GIVEN_RANDOM
    noise_ptr, stride_eb, stride_ev,  # [B, V] float32 exponential noise, read when GIVEN_RANDOM
    stats_ptr, stride_sp, stride_sr,  # [2 (3), B*(N+1) + B*N, S1] float32 launch 1's split statistics (K = N)
    cut_ptr, stride_cp,  # [2, B*(N+1) + B*N] float32 the cut launch's cuts and kept masses, read when WARP
    out_ptr, stride_ob, stride_od,  # [B, D+1] int64 tokens out
    nacc_ptr,  # [B] int64 accepted depth out
    path_ptr, stride_pb, stride_pd,  # [B, >= D] int64 accepted nodes out
    B, N, V, Vd, D, S1, temperature, seed,
    EPS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
    HAS_DRAFT: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr, ROW_SEED: tl.constexpr,
    GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    n_b = _num_drafts(num_nodes_ptr, b, N, RAGGED)
    temp, scale = _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP)
    greedy = temp == 0.0
    sampled = ~greedy
    seed_b, row_key = _philox_key(seed_ptr, b, seed, ROW_SEED, TREE_STREAM)
    t_row = target_ptr + b * stride_tb
    d_row = draft_ptr + b * stride_db
    t_stats = b * (N + 1)  # launch 1's rows: target b*(N+1) + t, then draft B*(N+1) + b*N + t
    d_stats = B * (N + 1) + b * N

    # The current node (-1: the root), its depth, its statistics, and its residual's c, Z and removed ids.
    cur = b * 0 - 1
    depth = b * 0
    m_p, z_p, cut_p, arg_p = _node_stats(stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, t_stats, depth == 0,
                                         sampled, S1, scale, BLOCK_S, WARP)
    # (without a draft, launch 1's draft rows are never written: they are read but never used, as q is not)
    m_q, z_q, cut_q, _ = _node_stats(stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, d_stats,
                                     sampled & (n_b > 0), sampled, S1, scale, BLOCK_S, WARP)
    c = m_p * 0.0
    z_r = c + 1.0
    # After an i.i.d. rejection, c + Z and its Z wait until a later sibling needs them (pending): the race folds the
    # mass in, so a node whose last child was rejected makes one pass, not two.
    c_new = c
    pending = b < 0
    slots = tl.arange(0, BLOCK_R)
    removed = slots * 0 - 1
    n_removed = (b * 0).to(tl.int32)
    ended = b < 0  # a token outside [0, V) ends the row's nodes there, as a smaller num_nodes would
    for i0 in range(0, n_b):
        i = b * 0 + i0  # (an int64 tensor: the interpreter's loop counter is a Python int)
        x = tl.load(nodes_ptr + b * stride_xb + i * stride_xn).to(tl.int64)
        a = tl.load(parents_ptr + b * stride_ab + i * stride_an).to(tl.int64)
        ended = ended | (x < 0) | (x >= V)
        if (a == cur) & ~ended & (depth < D):
            if greedy:
                take = x == arg_p
            else:
                if pending:  # the i.i.d. rejection before: Z = the new numerator's sum, one pass over p and q
                    rest = _mass(t_row + (cur + 1) * stride_tn, stride_tv, d_row + (cur + 1) * stride_dn, stride_dv,
                                 V, Vd, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, c_new, removed, slots, n_removed,
                                 BLOCK_V, HAS_DRAFT, WARP)
                    if rest > EPS * z_r:
                        c = c_new
                        z_r = rest
                    pending = pending & False
                l_p = _finite_logits(_scalar_load(t_row + (cur + 1) * stride_tn + x * stride_tv, x >= 0,
                                                  -float("inf")))
                p_x = _prob(l_p, m_p, z_p, scale, cut_p, WARP)
                q_x = p_x * 0.0
                if HAS_DRAFT:
                    l_q = _finite_logits(_scalar_load(d_row + (cur + 1) * stride_dn + x * stride_dv, x < Vd,
                                                      -float("inf")))
                    q_x = tl.where(x < Vd, _prob(l_q, m_q, z_q, scale, cut_q, WARP), 0.0)
                point = ~(q_x > 0.0)
                gone = tl.sum(((slots < n_removed) & (removed == x)).to(tl.int32), axis=0) > 0
                num_x = tl.where(gone, 0.0, tl.maximum(p_x - c * q_x, 0.0))
                u = _uniform(uniform_ptr, stride_ub, stride_un, b, i, seed_b, row_key, GIVEN_RANDOM)
                take = u * tl.where(point, 1.0, q_x) < num_x / z_r
                if ~take:
                    if point:  # R += {x}: no pass
                        rest = z_r - num_x
                        if (rest > EPS * z_r) & ~gone:  # (an id removed already changes nothing)
                            removed = tl.where(slots == n_removed, x.to(tl.int32), removed)
                            n_removed += 1
                            z_r = rest
                    else:  # c += Z (pending: Z when a later sibling needs it, or in the race)
                        c_new = c + z_r
                        pending = pending | True
            if take:
                tl.store(out_ptr + b * stride_ob + depth * stride_od, x)
                tl.store(path_ptr + b * stride_pb + depth * stride_pd, i)
                cur = i
                depth += 1
                m_p, z_p, cut_p, arg_p = _node_stats(stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp,
                                                     t_stats + cur + 1, depth > 0, sampled, S1, scale, BLOCK_S, WARP)
                m_q, z_q, cut_q, _ = _node_stats(stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp,
                                                 d_stats + cur + 1, sampled & (cur + 1 < n_b), sampled, S1, scale,
                                                 BLOCK_S, WARP)
                c = c * 0.0
                z_r = c + 1.0
                n_removed = n_removed * 0
                pending = pending & False

    # The next token: greedy rows argmax p; sampled rows the race over the residual (uniform when it has no mass).
    if greedy:
        next_token = arg_p
    else:
        p_row = t_row + (cur + 1) * stride_tn
        q_row = d_row + (cur + 1) * stride_dn
        noise_row = noise_ptr + b * stride_eb
        next_token, mass = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, V, Vd, m_p, z_p, cut_p,
                                 m_q, z_q, cut_q, scale, tl.where(pending, c_new, c), removed, slots, n_removed,
                                 seed_b, row_key, cur + 1, RACE_RESIDUAL, BLOCK_V, HAS_DRAFT, GIVEN_RANDOM, WARP)
        if pending & ~(mass > EPS * z_r):  # the pending residual is rounding (p equals q): the one before it
            next_token, mass = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, V, Vd, m_p, z_p,
                                     cut_p, m_q, z_q, cut_q, scale, c, removed, slots, n_removed, seed_b, row_key,
                                     cur + 1, RACE_RESIDUAL, BLOCK_V, HAS_DRAFT, GIVEN_RANDOM, WARP)
        if ~(mass > 0.0):
            next_token, _unused = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, V, Vd, m_p, z_p,
                                        cut_p, m_q, z_q, cut_q, scale, c, removed, slots, n_removed, seed_b, row_key,
                                        cur + 1, RACE_UNIFORM, BLOCK_V, HAS_DRAFT, GIVEN_RANDOM, WARP)
    next_token = tl.minimum(tl.maximum(next_token, 0), V - 1)
    # The row's output past the accepted path (the path itself was stored as it was accepted: disjoint addresses).
    for d0 in range(0, D + 1, BLOCK_D):
        pos = d0 + tl.arange(0, BLOCK_D)
        tl.store(out_ptr + b * stride_ob + pos * stride_od, tl.where(pos == depth, next_token, -1),
                 mask=(pos >= depth) & (pos <= D))
        tl.store(path_ptr + b * stride_pb + pos * stride_pd, tl.full([BLOCK_D], -1, tl.int64),
                 mask=(pos >= depth) & (pos < D))
    tl.store(nacc_ptr + b, depth)


def _seed_arg(seed: int) -> int:
    """Every int seed as a distinct value in [2**62, 2**63) (Triton types it int64), as ``verify_rows`` does."""
    return (seed % (1 << 62)) + (1 << 62)


def verify_tree_rows(target, tree_tokens, tree_parents, draft, num_nodes, temperature, seed, warp, max_depth,
                     uniforms=None, noise=None, block_v=None):
    """Token-tree verification from logits: launch 1 (``row_stats``, K = N: the draft's row N is never used), the cut
    launch with warpers, then ``_tree_kernel``, one program per row.

    Parameters
    ----------
    target : torch.Tensor
        [B, N+1, V] logits.
    tree_tokens, tree_parents : torch.Tensor
        [B, N] int32/int64.
    draft : torch.Tensor or None
        [B, N+1, Vd] logits (Vd <= V); None: point-mass candidates.
    num_nodes : torch.Tensor or None
        [B] int64 in [0, N].
    temperature : float or torch.Tensor
        Float (0: greedy) or [B] float32.
    seed : int or torch.Tensor
        Philox key: an int (with the row index) or [B] int64 per-row seeds.
    warp : specsampler.torch_backend.Warp or None
        top-k / top-p / min-p, for p and q alike.
    max_depth : int
        The output width D (nodes deeper are never reached).
    uniforms, noise : torch.Tensor or None
        Test hook: [B, N] float32 uniforms and [B, V] float32 positive noise replacing Philox.
    block_v : int or None
        This launch's tile width (a multiple of 4); None: 1024 on a GPU, 8192 under the interpreter.

    Returns
    -------
    tuple
        tokens [B, D+1], num_accepted [B] and path [B, D], int64.
    """
    prepared = prepare_tree_launch(target, tree_tokens, tree_parents, draft, num_nodes, temperature, seed, warp,
                                   max_depth, uniforms, noise, block_v)
    if prepared.args is not None:  # (an empty batch launches nothing)
        launching.launch(_tree_kernel, (target.shape[0], 1), prepared.args, prepared.constexprs, GPU_WARPS,
                         target.device)
    return prepared.outputs


class TreeLaunch(NamedTuple):
    """What every tree launcher (this module's, ``tree_traversal``'s) prepares alike: the outputs (tokens [B, D+1],
    num_accepted [B], path [B, D]; returned as they are for an empty batch, where `args` is None), launch 1's and the
    cut launch's results packed as the tree kernels' shared leading arguments, and their shared constexprs."""

    outputs: tuple
    args: tuple | None
    constexprs: dict | None


def prepare_tree_launch(target, tree_tokens, tree_parents, draft, num_nodes, temperature, seed, warp, max_depth,
                        uniforms, noise, block_v) -> TreeLaunch:
    """Validate the hooks and `block_v`, allocate the outputs, run launch 1 (``row_stats``) and, with warpers, the cut
    launch, and pack the arguments every tree kernel takes (arguments as :func:`verify_tree_rows`)."""
    from .cut_kernel import warp_cuts
    from .stats_kernel import row_stats

    batch, n_plus_1, vocab = target.shape
    n = n_plus_1 - 1
    device = target.device
    depth = int(max_depth)
    given = uniforms is not None
    if given and (tuple(uniforms.shape) != (batch, n) or noise is None or tuple(noise.shape) != (batch, vocab)):
        raise ValueError(f"uniforms must be [B, N] = {(batch, n)} and noise [B, V] = {(batch, vocab)}")
    if block_v is None:
        block_v = GPU_BLOCK_V if device.type == "cuda" else launching.CPU_BLOCK_V
    if block_v < RNG_GROUP.value or block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of 2 >= {RNG_GROUP.value}, got {block_v}")
    tokens = torch.empty(batch, depth + 1, dtype=torch.int64, device=device)
    num_accepted = torch.empty(batch, dtype=torch.int64, device=device)
    path = torch.empty(batch, max(depth, 1), dtype=torch.int64, device=device)  # (never a zero-size pointer)
    if not batch:
        return TreeLaunch((tokens, num_accepted, path[:, :depth]), None, None)
    draft_rows = None if draft is None else draft[:, :n]  # node N - 1 has no children: K = N draft rows
    stats = row_stats(target, draft_rows, num_nodes, temperature, None, None, None, candidates=warp is not None)
    cuts = None if warp is None else warp_cuts(target, draft_rows, num_nodes, temperature, warp, stats)
    stats_t, s1 = stats[:2]
    row_temp = isinstance(temperature, torch.Tensor)
    row_seed = isinstance(seed, torch.Tensor)
    nodes = tree_tokens if n else target  # (absent or empty tensors: a dummy pointer, never read)
    parents = tree_parents if n else target
    d = draft if draft is not None else target
    u = uniforms if given and n else target
    e = noise if given else target
    c = cuts if cuts is not None else stats_t
    args = (target, *target.stride(), d, *d.stride(), nodes, *nodes.stride()[:2], parents, *parents.stride()[:2],
            num_nodes if num_nodes is not None else target, temperature if row_temp else target,
            seed if row_seed else target, u, *u.stride()[:2], e, *e.stride()[:2], stats_t, *stats_t.stride()[:2],
            c, c.stride(0), tokens, *tokens.stride(), num_accepted, path, *path.stride(), batch, n, vocab,
            d.shape[2], depth, s1, 0.0 if row_temp else float(temperature), 0 if row_seed else _seed_arg(seed))
    constexprs = dict(EPS=RESIDUAL_EPS, BLOCK_V=block_v, BLOCK_S=BLOCK_S,
                      BLOCK_R=max(2, triton.next_power_of_2(max(n, 1))), HAS_DRAFT=draft is not None,
                      RAGGED=num_nodes is not None, ROW_TEMP=row_temp, ROW_SEED=row_seed, GIVEN_RANDOM=given,
                      WARP=cuts is not None)
    return TreeLaunch((tokens, num_accepted, path[:, :depth]), args, constexprs)
