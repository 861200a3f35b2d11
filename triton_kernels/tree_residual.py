"""The residual that ``tree_traversal``'s walks keep per node, and its operations (``@triton.jit`` helpers, inlined):
node v's next-token distribution P_v = num_v / Z_v with num_v(y) = max(p_v(y) - c_v q_v(y), 0), each removed id y
with its own c_y (+inf: removed as a point mass, value 0); entering a child (its weight), deleting one (one pass over
the node's rows for the new Z when the child was drawn from the draft, none for a point mass), descending along first
children, and the exponential race for the next token (removed ids raced apart, folded in by key).

Arguments shared by the helpers: `row`, the row's pointers and numbers (t_row, stride_tn, stride_tv, d_row,
stride_dn, stride_dv, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, t_stats, d_stats, n_b, sampled, S1, scale,
V, Vd); `state`, per-node vectors [BLOCK_N] indexed by v + 1 (alpha, c, Z, kept); `entries`, the removed ids
[BLOCK_R] (ids, c, owner v + 1) and their count. The algorithm and its proof: ``tree_traversal`` and
``specsampler.torch_traversal``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.random import philox

from .jit_helpers import RNG_GROUP, _finite_logits, _splat, _to_uniform
from .tree_kernel import _node_stats, _prob, _race_numerator, _scalar_load
from .verify_race import RACE_RESIDUAL, RACE_UNIFORM, _race_tiles

FAR = tl.constexpr(1 << 30)  # past any node index


@triton.jit
def _pick(vec, slots, j):
    """vec[j] as a scalar (one reduction)."""
    return tl.sum(tl.where(slots == j, vec, 0), axis=0)


@triton.jit
def _num(p, q, c):
    """max(p - c q, 0); 0 where c is +inf (an id removed as a point mass)."""
    finite = c < float("inf")
    return tl.where(finite, tl.maximum(p - tl.where(finite, c, 0.0) * q, 0.0), 0.0)


@triton.jit
def _stats(row, v, BLOCK_S: tl.constexpr, WARP: tl.constexpr):
    """Node v's statistics (v = -1: the root): (m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q) of its target and draft rows.
    `row`: (t_row, stride_tn, stride_tv, d_row, stride_dn, stride_dv, stats_ptr, stride_sp, stride_sr, cut_ptr,
    stride_cp, t_stats, d_stats, n_b, sampled, S1, scale, V, Vd)."""
    (_t, _stn, _stv, _d, _sdn, _sdv, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, t_stats, d_stats, n_b,
     sampled, S1, scale, _v, _vd) = row
    m_p, z_p, cut_p, arg_p = _node_stats(stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, t_stats + v + 1,
                                         v >= -1, sampled, S1, scale, BLOCK_S, WARP)
    m_q, z_q, cut_q, _ = _node_stats(stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, d_stats + v + 1,
                                     sampled & (v + 1 < n_b), sampled, S1, scale, BLOCK_S, WARP)
    return m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q


@triton.jit
def _probs_at(row, st, v, y, HAS_DRAFT: tl.constexpr, WARP: tl.constexpr):
    """(p_v(y), q_v(y)) for an id y in [0, V) (q 0 past Vd and without a draft)."""
    t_row, stride_tn, stride_tv, d_row, stride_dn, stride_dv = row[0], row[1], row[2], row[3], row[4], row[5]
    scale, Vd = row[16], row[18]
    m_p, z_p, cut_p, _arg, m_q, z_q, cut_q = st
    p_y = _prob(_finite_logits(_scalar_load(t_row + (v + 1) * stride_tn + y * stride_tv, y >= 0, -float("inf"))),
                m_p, z_p, scale, cut_p, WARP)
    q_y = p_y * 0.0
    if HAS_DRAFT:
        l_q = _finite_logits(_scalar_load(d_row + (v + 1) * stride_dn + y * stride_dv, y < Vd, -float("inf")))
        q_y = tl.where(y < Vd, _prob(l_q, m_q, z_q, scale, cut_q, WARP), 0.0)
    return p_y, q_y


@triton.jit
def _child_terms(row, st, v, x, c_v, kept_v, entries, BLOCK_R: tl.constexpr, HAS_DRAFT: tl.constexpr,
                 WOR: tl.constexpr, WARP: tl.constexpr):
    """A child of node v with token x: (num_v(x), Q_c(x) (0: a point mass), q_v(x), its entry's slot or -1)."""
    rid, rc, rown, n_rem = entries
    k = tl.arange(0, BLOCK_R)
    hit = (k < n_rem) & (rown == v + 1) & (rid == x)
    slot = tl.max(tl.where(hit, k, -1), axis=0)
    gone = slot >= 0
    p_x, q_x = _probs_at(row, st, v, x, HAS_DRAFT, WARP)
    num_x = _num(p_x, q_x, tl.where(gone, _pick(rc, k, slot), c_v))
    big_q = q_x
    if WOR:
        big_q = tl.where(gone, 0.0, q_x / tl.where(kept_v > 0.0, kept_v, 1.0))
    if not HAS_DRAFT:
        big_q = q_x * 0.0
    return num_x, big_q, q_x, slot


@triton.jit
def _mass(row, st, v, c, entries, BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr, HAS_DRAFT: tl.constexpr,
          WARP: tl.constexpr):
    """Z of node v's numerator with scalar `c`: one pass over its p and q rows (per-lane sums, one reduction), then
    each removed id's own value in place of the pass's."""
    t_row, stride_tn, stride_tv, d_row, stride_dn, stride_dv = row[0], row[1], row[2], row[3], row[4], row[5]
    scale, V, Vd = row[16], row[17], row[18]
    m_p, z_p, cut_p, _arg, m_q, z_q, cut_q = st
    p_row = t_row + (v + 1) * stride_tn
    q_row = d_row + (v + 1) * stride_dn
    lanes = tl.arange(0, BLOCK_V)
    acc = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + lanes
        mask = offs < V
        p = _prob(_finite_logits(tl.load(p_row + offs * stride_tv, mask=mask, other=-float("inf"))), m_p, z_p, scale,
                  cut_p, WARP)
        if HAS_DRAFT:
            q_mask = mask & (offs < Vd)
            q = _prob(_finite_logits(tl.load(q_row + offs * stride_dv, mask=q_mask, other=-float("inf"))), m_q, z_q,
                      scale, cut_q, WARP)
            p = tl.maximum(p - c * tl.where(q_mask, q, 0.0), 0.0)
        acc += tl.where(mask, p, 0.0)
    total = tl.sum(acc, axis=0)
    rid, rc, rown, n_rem = entries
    k = tl.arange(0, BLOCK_R)
    for j in range(0, n_rem):
        if _pick(rown, k, j) == v + 1:
            p_y, q_y = _probs_at(row, st, v, _pick(rid, k, j), HAS_DRAFT, WARP)
            total += _num(p_y, q_y, _pick(rc, k, j)) - tl.maximum(p_y - c * q_y, 0.0)
    return tl.maximum(total, 0.0)


@triton.jit
def _reject(row, v, x, state, entries, EPS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_S: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, HAS_DRAFT: tl.constexpr, WOR: tl.constexpr,
            WARP: tl.constexpr):
    """Delete a child (token x) of node v: v's alpha, c, Z, kept and removed ids updated. Returns the new state's
    (alpha, c, Z, kept) vectors and entries (ids, c, owners, count), flat."""
    alpha_vec, c_vec, z_vec, kept_vec = state
    rid, rc, rown, n_rem = entries
    slots = tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_R)
    alpha = _pick(alpha_vec, slots, v + 1)
    c_v = _pick(c_vec, slots, v + 1)
    z_v = _pick(z_vec, slots, v + 1)
    kept = _pick(kept_vec, slots, v + 1)
    st = _stats(row, v, BLOCK_S, WARP)
    num_x, big_q, q_x, slot = _child_terms(row, st, v, x, c_v, kept, entries, BLOCK_R, HAS_DRAFT, WOR, WARP)
    drawn = big_q > 0.0  # else a point mass
    point = ~drawn
    c_new = c_v
    z_new = z_v - num_x
    r = alpha * (z_new / z_v)
    if drawn:  # c += Z / (alpha kept): one pass for the new Z (none when alpha = 0: r = 0, P kept)
        if alpha > 0.0:
            c_new = c_v + z_v / (alpha * tl.where(kept > 0.0, kept, 1.0))
            z_new = _mass(row, st, v, c_new, entries, BLOCK_V, BLOCK_R, HAS_DRAFT, WARP)
            r = alpha * (z_new / z_v)
        else:
            r = alpha * 0.0
    keep = r > EPS
    denom = r + 1.0 - alpha
    here = slots == v + 1
    alpha_vec = tl.where(here, tl.where(denom > 0.0, r / tl.where(denom > 0.0, denom, 1.0), 1.0), alpha_vec)
    c_after = tl.where(keep, c_new, c_v)
    c_vec = tl.where(here, c_after, c_vec)
    z_vec = tl.where(here, tl.where(keep, z_new, z_v), z_vec)
    # Removed ids: a point mass deleted (kept) takes the value 0; without replacement, a draft child's id is frozen
    # at the c after its deletion (Q gives it nothing from now on).
    add = point & keep
    if WOR:
        add = add | drawn
        kept_vec = tl.where(here & _splat(drawn, slots), kept - q_x, kept_vec)
    c_entry = tl.where(point, float("inf"), c_after)
    if add & (slot >= 0):
        rc = tl.where(k == slot, c_entry, rc)
    if add & (slot < 0):
        rid = tl.where(k == n_rem, x, rid)
        rc = tl.where(k == n_rem, c_entry, rc)
        rown = tl.where(k == n_rem, v + 1, rown)
        n_rem += 1
    return alpha_vec, c_vec, z_vec, kept_vec, rid, rc, rown, n_rem


@triton.jit
def _enter(row, c, tok, par, state, entries, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_R: tl.constexpr, HAS_DRAFT: tl.constexpr, WOR: tl.constexpr, WARP: tl.constexpr):
    """alpha_c = min(1, alpha_v P_v(x_c) / Q_c(x_c)) for node c, child of v (Q 1 for a point mass): the new alpha
    vector."""
    alpha_vec, c_vec, z_vec, kept_vec = state
    slots = tl.arange(0, BLOCK_N)
    v = _pick(par, slots, c)
    x = _pick(tok, slots, c)
    st = _stats(row, v, BLOCK_S, WARP)
    num_x, big_q, _q, _slot = _child_terms(row, st, v, x, _pick(c_vec, slots, v + 1), _pick(kept_vec, slots, v + 1),
                                           entries, BLOCK_R, HAS_DRAFT, WOR, WARP)
    ratio = num_x / _pick(z_vec, slots, v + 1) / tl.where(big_q > 0.0, big_q, 1.0)
    weight = tl.minimum(_pick(alpha_vec, slots, v + 1) * ratio, 1.0)
    return tl.where(slots == c + 1, weight, alpha_vec)


@triton.jit
def _first_child(node, depth, D, tok, par, live, BLOCK_N: tl.constexpr):
    """Node `node`'s first child in the tree (-1: none, or at depth D already)."""
    idx = tl.arange(0, BLOCK_N)
    child = tl.min(tl.where(live & (par == node) & (idx > node), idx, FAR), axis=0)
    return tl.where((child < FAR) & (depth < D), child, -1)


@triton.jit
def _descend(row, node, depth, D, tok, par, live, state, entries, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_R: tl.constexpr, HAS_DRAFT: tl.constexpr, WOR: tl.constexpr, WARP: tl.constexpr):
    """From `node` (entered; -1 the root) down its first children, each entered: (the leaf, its depth, alpha)."""
    alpha_vec = state[0]
    for _level in range(0, D):
        child = _first_child(node, depth, D, tok, par, live, BLOCK_N)
        if child >= 0:
            alpha_vec = _enter(row, child, tok, par, (alpha_vec, state[1], state[2], state[3]), entries, BLOCK_S,
                               BLOCK_N, BLOCK_R, HAS_DRAFT, WOR, WARP)
            node = child
            depth += 1
    return node, depth, alpha_vec


@triton.jit
def _exp_at(y, pos, noise_row, stride_ev, seed_b, row_key, GIVEN_RANDOM: tl.constexpr):
    """E_y of the race at row position `pos` (``verify_race``'s: Philox group y // 4, output y % 4), or noise[y]."""
    lane = tl.arange(0, 2)
    if GIVEN_RANDOM:
        e = tl.max(tl.load(noise_row + (y + lane * 0) * stride_ev), axis=0)
    else:
        zero = (lane * 0).to(tl.uint32)
        r0, r1, r2, r3 = philox(seed_b, zero + (y // RNG_GROUP).to(tl.uint32), zero + pos.to(tl.uint32),
                                zero + row_key.to(tl.uint32), zero + 1)
        j = y % RNG_GROUP
        bits = tl.where(j == 0, r0, tl.where(j == 1, r1, tl.where(j == 2, r2, r3)))
        e = tl.max(-tl.log(_to_uniform(bits, True)), axis=0)
    return e


@triton.jit
def _next_token(row, f, c_f, entries, noise_row, stride_ev, seed_b, row_key, BLOCK_V: tl.constexpr,
                BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr, HAS_DRAFT: tl.constexpr, GIVEN_RANDOM: tl.constexpr,
                WARP: tl.constexpr):
    """The race over node f's numerator (its removed ids raced apart, then folded in by key, lower id on ties);
    uniform over [0, V) when it has no mass."""
    t_row, stride_tn, stride_tv, d_row, stride_dn, stride_dv = row[0], row[1], row[2], row[3], row[4], row[5]
    scale, V, Vd = row[16], row[17], row[18]
    st = _stats(row, f, BLOCK_S, WARP)
    m_p, z_p, cut_p, _arg, m_q, z_q, cut_q = st
    rid, rc, rown, n_rem = entries
    k = tl.arange(0, BLOCK_R)
    dropped = tl.where(rown == f + 1, rid, -1)
    dist_args = (t_row + (f + 1) * stride_tn, stride_tv, d_row + (f + 1) * stride_dn, stride_dv, Vd, m_p, z_p, cut_p,
                 m_q, z_q, cut_q, scale, c_f, dropped, k, n_rem)
    top, first, mass = _race_tiles(dist_args, noise_row, stride_ev, 0, V, f + 1, seed_b, row_key, _race_numerator,
                                   RACE_RESIDUAL, BLOCK_V, False, HAS_DRAFT, GIVEN_RANDOM, WARP, True)
    first = first.to(tl.int64)
    for j in range(0, n_rem):
        if _pick(rown, k, j) == f + 1:
            y = _pick(rid, k, j)
            p_y, q_y = _probs_at(row, st, f, y, HAS_DRAFT, WARP)
            value = _num(p_y, q_y, _pick(rc, k, j))
            key = value / _exp_at(y, f + 1, noise_row, stride_ev, seed_b, row_key, GIVEN_RANDOM)
            better = (key > top) | ((key == top) & (y < first))
            first = tl.where(better, y, first)
            top = tl.where(better, key, top)
            mass += value
    if ~(mass > 0.0):
        _top, uniform_id, _mass = _race_tiles(dist_args, noise_row, stride_ev, 0, V, f + 1, seed_b, row_key,
                                              _race_numerator, RACE_UNIFORM, BLOCK_V, False, HAS_DRAFT, GIVEN_RANDOM,
                                              WARP, True)
        first = uniform_id.to(tl.int64)
    return tl.minimum(tl.maximum(first, 0), V - 1)
