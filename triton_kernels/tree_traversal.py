"""Traversal Verification of token trees, and the token rule on candidates drawn without replacement,
``_traversal_kernel`` (after launch 1 and, with warpers, the cut launch; the oracle is ``specsampler.torch_traversal``).

Conventions as ``tree_kernel``: grid (B,), ONE program per row; node i holds token x_i and parent a_i in [-1, i); p_v
is the warped target distribution after node v's path (target row v + 1), q_v the draft's that v's children were
drawn from (draft row v + 1).

Traversal (TRAVERSAL on; Weng et al., NeurIPS 2025, arXiv 2505.12398; the rule and its proof are in
``torch_traversal``): every node v keeps a weight alpha_v and a next-token distribution P_v; the nodes are tested in
post-order (children in node order), each once all its children were rejected. Entering child c of v:
alpha_c = min(1, alpha_v P_v(x_c) / Q_c(x_c)); testing c: accept when u_c < alpha_c (the path root..c is accepted and
the next token is drawn from P_c); else c is deleted: r = sum max(alpha_v P_v - Q_c, 0), alpha_v <- r / (r + 1 -
alpha_v) (1 where that is 0 / 0), P_v <- norm(max(alpha_v P_v - Q_c, 0)) (kept when r <= EPS: rounding); then the
walk enters c's next sibling and its first children down to a leaf, or, without one, tests v (the root is never
tested: its last child deleted, the next token is drawn from P_root). Token rule (TRAVERSAL off, for WOR): the nodes
in order, child c of the current node accepted when u_c Q_c(x_c) < P(x_c), a rejection P <- norm(max(P - Q_c, 0)).

No residual row is materialised: P_v = num_v / Z_v with

    num_v(y) = max(p_v(y) - c_v q_v(y), 0)   for y not removed at v,   max(p_v(y) - c_y q_v(y), 0) for y removed,

a scalar c_v per node (0 when fresh) and Z_v its sum (1 when fresh), because a rejection of a child drawn from q_v
(i.i.d., Q_c = q_v; without replacement, Q_c = q_v without the earlier siblings' tokens / kept_v, kept_v the draft
mass left) maps max(s p - t q, 0) to the same form: c_v <- c_v + Z_v / (alpha_v kept_v) (one pass over the node's p
and q rows for the new Z_v; r = alpha_v Z_new / Z_old). A point-mass child (no draft logits, or Q_c(x_c) = 0: an id the
draft gives nothing, or one removed at v already) removes x_c with the value 0 (c_y = +inf), Z_v -= num_v(x_c),
r = alpha_v (Z_v - num_v(x_c)) / Z_v: no pass. Without replacement, a rejected child's id is removed at v with the c_v
after its rejection (Q gives it nothing any more, so its value is frozen). Removed ids are entries (id, c_y, owner
node) in registers ([BLOCK_R], BLOCK_R >= N: at most one entry per rejected node); per-node scalars (alpha, c, Z,
kept) in [BLOCK_N] vectors (BLOCK_N >= N + 1), the tree's tokens and parents in [BLOCK_N] vectors (first child and
next sibling found by one reduction each).

The next token: the exponential race argmax num_f(y) / E_y over the accepted node f's numerator (the root's when
none), its removed ids raced apart (their keys from the same E_y, folded in after the tile loop); uniform when the
numerator has no mass. Greedy rows walk the argmax path as ``tree_kernel`` (the first child equal to argmax p) and
emit the argmax.

Randomness as ``tree_kernel``: node i's acceptance uniform Philox stream 0 at position i, the race stream 1 at
position f + 1, keyed by seed XOR STREAM_KEYS[STREAM_TREE]; the testing entry replaces them with uniforms [B, N] and
noise [B, V] (the oracle takes the same). On a chain the weights are block verification's (``verify_block``): the
tokens equal ``verify(method="block")``'s on the same uniforms and noise.

Bytes (s the scores' element size): launch 1 and the cut launch as for ``tree_kernel``. This launch reads the row's
N tokens and parents once (8 * 2N), per node entered or deleted its parent's statistics (16 * S1) and 2 gathered
scores, one (V + Vd) * s pass per deletion of a child drawn from the draft (traversal: every such deletion, the root's
last included; the token rule: as ``tree_kernel`` without its deferral), and the race's pass (V * s at a fresh node,
(V + Vd) * s after a deletion), and writes 8 * (2D + 2) bytes a row. No workspace, no host synchronisation when
`max_depth` is given. Cost against the token rule: traversal tests below a deleted node (the token rule never looks
there), so a row whose drafts are all rejected makes a pass per deleted node drawn from the draft, serially in its one
program; rows that accept deep make as few as the token rule.

Compiled offline for sm_90 (bench/compile_offline_tree.py; bench/results/compile_offline_traversal_triton*.txt): 8
warps, 63-80 registers with Triton 3.9, 98-128 with 3.6, no spill inside a loop (a few outside in the warped variant);
node indices, depths and ids are int32 (at int64, 3.6 spilled inside the walk's loop). Not yet timed on a GPU.

References: Weng et al. 2025 (arXiv 2505.12398); Jeon et al. 2024 (arXiv 2402.14160, without replacement); Sun et al.
2025 (block verification, arXiv 2403.10444); ``tree_kernel`` (the walk, Philox layout, the race).
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import launching
from .jit_helpers import _num_drafts, _philox_key, _scaled_temperature
from .tree_kernel import BLOCK_D, GPU_WARPS, TREE_STREAM, _uniform, prepare_tree_launch
from .tree_residual import FAR, _child_terms, _descend, _enter, _next_token, _pick, _reject, _stats


@triton.jit
def _traverse(row, D, lim, tok, par, live, uni, state, entries, EPS: tl.constexpr, BLOCK_V: tl.constexpr,
              BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, HAS_DRAFT: tl.constexpr,
              WOR: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr):
    """Traversal's walk of a sampled row: (accepted node, -1 the root; its depth; its c; entries). `uni`:
    (uniform_ptr, stride_ub, stride_un, b, seed_b, row_key); at most `lim` tests, one per node."""
    uniform_ptr, stride_ub, stride_un, b, seed_b, row_key = uni
    alpha_vec, c_vec, z_vec, kept_vec = state
    rid, rc, rown, n_rem = entries
    slots = tl.arange(0, BLOCK_N)
    none = (b * 0 - 1).to(tl.int32)  # node indices, depths and ids are int32 (registers: Triton 3.6 spilled at int64)
    node, depth, alpha_vec = _descend(row, none, none + 1, D, tok, par, live, state, entries, BLOCK_S, BLOCK_N,
                                      BLOCK_R, HAS_DRAFT, WOR, WARP)
    done = node < 0
    found = none
    for _step in range(0, lim):
        if ~done:
            u = _uniform(uniform_ptr, stride_ub, stride_un, b, node, seed_b, row_key, GIVEN_RANDOM)
            if u < _pick(alpha_vec, slots, node + 1):
                found = node
                done = done | True
            else:
                v = _pick(par, slots, node)
                alpha_vec, c_vec, z_vec, kept_vec, rid, rc, rown, n_rem = _reject(
                    row, v, _pick(tok, slots, node), (alpha_vec, c_vec, z_vec, kept_vec), (rid, rc, rown, n_rem),
                    EPS, BLOCK_V, BLOCK_S, BLOCK_N, BLOCK_R, HAS_DRAFT, WOR, WARP)
                idx = tl.arange(0, BLOCK_N)
                sibling = tl.min(tl.where(live & (par == v) & (idx > node), idx, FAR), axis=0)
                if sibling < FAR:
                    alpha_vec = _enter(row, sibling, tok, par, (alpha_vec, c_vec, z_vec, kept_vec),
                                       (rid, rc, rown, n_rem), BLOCK_S, BLOCK_N, BLOCK_R, HAS_DRAFT, WOR, WARP)
                    node, depth, alpha_vec = _descend(row, sibling, depth, D, tok, par, live,
                                                      (alpha_vec, c_vec, z_vec, kept_vec), (rid, rc, rown, n_rem),
                                                      BLOCK_S, BLOCK_N, BLOCK_R, HAS_DRAFT, WOR, WARP)
                else:
                    node = v
                    depth -= 1
                    done = done | (v < 0)
    return found, depth, _pick(c_vec, slots, found + 1), rid, rc, rown, n_rem


@triton.jit
def _token_walk(row, D, lim, tok, par, uni, state, entries, EPS: tl.constexpr, BLOCK_V: tl.constexpr,
                BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, HAS_DRAFT: tl.constexpr,
                WOR: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr):
    """The token rule's walk of a sampled row (the nodes in order; child c of the current node accepted when
    u_c Q_c(x_c) < P(x_c)): (current node, its depth, its c, entries)."""
    uniform_ptr, stride_ub, stride_un, b, seed_b, row_key = uni
    alpha_vec, c_vec, z_vec, kept_vec = state
    rid, rc, rown, n_rem = entries
    slots = tl.arange(0, BLOCK_N)
    cur = (b * 0 - 1).to(tl.int32)
    depth = cur + 1
    for i0 in range(0, lim):
        i = depth * 0 + i0  # (an int32 tensor: the interpreter's loop counter is a Python int)
        if (_pick(par, slots, i) == cur) & (depth < D):
            x = _pick(tok, slots, i)
            st = _stats(row, cur, BLOCK_S, WARP)
            num_x, big_q, _q, _slot = _child_terms(row, st, cur, x, _pick(c_vec, slots, cur + 1),
                                                   _pick(kept_vec, slots, cur + 1), (rid, rc, rown, n_rem), BLOCK_R,
                                                   HAS_DRAFT, WOR, WARP)
            u = _uniform(uniform_ptr, stride_ub, stride_un, b, i, seed_b, row_key, GIVEN_RANDOM)
            if u * tl.where(big_q > 0.0, big_q, 1.0) < num_x / _pick(z_vec, slots, cur + 1):
                cur = i
                depth += 1
            else:
                alpha_vec, c_vec, z_vec, kept_vec, rid, rc, rown, n_rem = _reject(
                    row, cur, x, (alpha_vec, c_vec, z_vec, kept_vec), (rid, rc, rown, n_rem), EPS, BLOCK_V, BLOCK_S,
                    BLOCK_N, BLOCK_R, HAS_DRAFT, WOR, WARP)
    return cur, depth, _pick(c_vec, slots, cur + 1), rid, rc, rown, n_rem


@triton.jit
def _greedy_walk(row, D, lim, tok, par, b, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, WARP: tl.constexpr):
    """A greedy row: from the root, the first child equal to the argmax at each node. (node, depth, its argmax)."""
    slots = tl.arange(0, BLOCK_N)
    cur = (b * 0 - 1).to(tl.int32)
    depth = cur + 1
    arg_p = _stats(row, cur, BLOCK_S, WARP)[3]
    for i0 in range(0, lim):
        i = depth * 0 + i0
        if (_pick(par, slots, i) == cur) & (depth < D) & (_pick(tok, slots, i) == arg_p):
            cur = i
            depth += 1
            arg_p = _stats(row, cur, BLOCK_S, WARP)[3]
    return cur, depth, arg_p


@triton.jit(do_not_specialize=["B", "N", "V", "Vd", "D", "S1", "temperature", "seed", "stride_xb", "stride_xn",
                               "stride_ab", "stride_an", "stride_ub", "stride_un", "stride_eb", "stride_ev",
                               "stride_sp", "stride_sr", "stride_cp", "stride_ob", "stride_od", "stride_pb",
                               "stride_pd"])
def _traversal_kernel(
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
    EPS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    HAS_DRAFT: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr, ROW_SEED: tl.constexpr,
    GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr, TRAVERSAL: tl.constexpr, WOR: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    n_b = _num_drafts(num_nodes_ptr, b, N, RAGGED)
    temp, scale = _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP)
    sampled = ~(temp == 0.0)
    seed_b, row_key = _philox_key(seed_ptr, b, seed, ROW_SEED, TREE_STREAM)
    # The row's tree: tokens and parents in registers; a token outside [0, V) ends the row's nodes there (lim).
    idx = tl.arange(0, BLOCK_N)
    in_row = idx < n_b
    tok = tl.load(nodes_ptr + b * stride_xb + idx * stride_xn, mask=in_row, other=-1).to(tl.int64)
    lim = tl.min(tl.where(in_row & ((tok < 0) | (tok >= V)), idx, n_b.to(tl.int32)), axis=0)
    tok = tok.to(tl.int32)  # (in [0, V) below lim)
    par = tl.load(parents_ptr + b * stride_ab + idx * stride_an, mask=in_row, other=-2)
    par = tl.minimum(tl.maximum(par, -2), BLOCK_N).to(tl.int32)  # (any parent outside [-1, i) is never one)
    live = idx < lim
    row = (target_ptr + b * stride_tb, stride_tn, stride_tv, draft_ptr + b * stride_db, stride_dn, stride_dv,
           stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, b * (N + 1), B * (N + 1) + b * N, n_b, sampled, S1,
           scale, V, Vd)
    if sampled:
        ones = tl.full([BLOCK_N], 1.0, tl.float32)
        state = (ones, ones * 0.0, ones, ones)  # alpha, c, Z, kept per node (slot v + 1)
        k = tl.arange(0, BLOCK_R)
        entries = (k * 0 - 1, tl.zeros([BLOCK_R], tl.float32), k * 0 - 1, (b * 0).to(tl.int32))
        uni = (uniform_ptr, stride_ub, stride_un, b, seed_b, row_key)
        if TRAVERSAL:
            node, depth, c_f, rid, rc, rown, n_rem = _traverse(row, D, lim, tok, par, live, uni, state, entries, EPS,
                                                               BLOCK_V, BLOCK_S, BLOCK_N, BLOCK_R, HAS_DRAFT, WOR,
                                                               GIVEN_RANDOM, WARP)
        else:
            node, depth, c_f, rid, rc, rown, n_rem = _token_walk(row, D, lim, tok, par, uni, state, entries, EPS,
                                                                 BLOCK_V, BLOCK_S, BLOCK_N, BLOCK_R, HAS_DRAFT, WOR,
                                                                 GIVEN_RANDOM, WARP)
        next_token = _next_token(row, node, c_f, (rid, rc, rown, n_rem), noise_ptr + b * stride_eb, stride_ev, seed_b,
                                 row_key, BLOCK_V, BLOCK_S, BLOCK_R, HAS_DRAFT, GIVEN_RANDOM, WARP)
    else:
        node, depth, next_token = _greedy_walk(row, D, lim, tok, par, b, BLOCK_S, BLOCK_N, WARP)
    _write_row(out_ptr + b * stride_ob, stride_od, path_ptr + b * stride_pb, stride_pd, nacc_ptr + b, node, depth,
               next_token, tok, par, D, BLOCK_N)


@triton.jit
def _write_row(out_row, stride_od, path_row, stride_pd, nacc_ptr, node, depth, next_token, tok, par, D,
               BLOCK_N: tl.constexpr):
    """The accepted path (node's ancestors, stored from the deepest up), the next token, -1 past it; the depth."""
    slots = tl.arange(0, BLOCK_N)
    for k0 in range(0, D):
        level = depth - 1 - k0
        if level >= 0:
            tl.store(out_row + level * stride_od, _pick(tok, slots, node))
            tl.store(path_row + level * stride_pd, node)
            node = _pick(par, slots, node)
    for d0 in range(0, D + 1, BLOCK_D):
        pos = d0 + tl.arange(0, BLOCK_D)
        tl.store(out_row + pos * stride_od, tl.where(pos == depth, next_token, -1), mask=(pos >= depth) & (pos <= D))
        tl.store(path_row + pos * stride_pd, tl.full([BLOCK_D], -1, tl.int64), mask=(pos >= depth) & (pos < D))
    tl.store(nacc_ptr, depth)


def verify_tree_rule_rows(target, tree_tokens, tree_parents, draft, num_nodes, temperature, seed, warp, max_depth,
                          uniforms=None, noise=None, block_v=None, *, traversal=True, without_replacement=False):
    """Traversal Verification (`traversal`), or the token rule on candidates drawn `without_replacement`, from logits:
    launch 1 (``row_stats``, K = N), the cut launch with warpers, then ``_traversal_kernel``, one program per row.

    Parameters
    ----------
    target, tree_tokens, tree_parents, draft, num_nodes, temperature, seed, warp, max_depth, uniforms, noise, block_v
        As ``tree_kernel.verify_tree_rows``.
    traversal : bool
        Traversal Verification; False: the token rule (with `without_replacement`).
    without_replacement : bool
        Each node's children were drawn one after another without the earlier siblings' tokens (Q_c the draft's row
        without them, renormalised); nothing changes without draft logits.

    Returns
    -------
    tuple
        tokens [B, D+1], num_accepted [B] and path [B, D], int64.
    """
    prepared = prepare_tree_launch(target, tree_tokens, tree_parents, draft, num_nodes, temperature, seed, warp,
                                   max_depth, uniforms, noise, block_v)
    if prepared.args is not None:  # (an empty batch launches nothing)
        n = target.shape[1] - 1
        constexprs = dict(prepared.constexprs, BLOCK_N=max(2, triton.next_power_of_2(n + 1)),
                          TRAVERSAL=bool(traversal), WOR=bool(without_replacement) and draft is not None)
        launching.launch(_traversal_kernel, (target.shape[0], 1), prepared.args, constexprs, GPU_WARPS,
                         target.device)
    return prepared.outputs
