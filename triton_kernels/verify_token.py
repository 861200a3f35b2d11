"""Token verification in launch 2 (``verify_kernel._verify_kernel``, BLOCK off): the first rejection n and the race
over row n's split (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318).

Every program of row b combines the statistics of its K+1 target and K draft rows (``verify_positions``) into
p_t(x_t) and q_t(x_t), BLOCK_K positions at a time (the loop over further positions is compiled only for
K + 1 > BLOCK_K, MANY_K), and decides acceptance: u_t * q_t(x_t) < p_t(x_t), u_t Philox stream 0 at position t
(greedy: x_t == argmax p_t). n is the first rejection, K_b if none. A greedy row (T_b below 2**-126, where 1 / T_b
would overflow, counts as 0) emits argmax p_n and is done; a sampled row races max(0, p_n - q_n) (p_n for the bonus
row) over its split (``verify_race``), and the row's last program writes the row.

Bytes: the statistics (8 * (2K+1) * S1 per program, from cache), 2K gathered scores and K drafts per program, one
residual row pair (V + Vd) * s per sampled row over all its programs; writes 8 * (K+2) bytes a row.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.random import philox

from .jit_helpers import _to_uniform
from .verify_positions import _gather_drafts, _logprob, _position_probs, _score_at, _write_logprobs, _write_row
from .verify_race import WS_SLOT, _fallback_draw, _fold, _unpack_id


@triton.jit
def _accept_prefix(t_row, stride_tt, stride_tv, d_row, stride_dt, stride_dv, tokens_ptr, stride_xb, stride_xt,
                   uniform_ptr, stride_ub, stride_ut, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp,
                   b, B, K, V, Vd, S1, k_b, greedy, scale, seed_b, row_key, x_first, lp_first, lq_first, log_v,
                   BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
                   GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr, MANY_K: tl.constexpr, LOGPROBS: tl.constexpr):
    """n = the first rejected position (K_b if none), row n's statistics, x_n, and whether q_n is one-hot at x_n:
    (n, m_p, z_p, cut_p, argmax p, m_q, z_q, cut_q, x_n, one_hot_n). With WARP the sums and cuts are the warped
    rows' (from :func:`_warp_cut_kernel`). Positions 0 .. BLOCK_K - 1 are decided from :func:`_gather_drafts`' values
    read before (outside the loop over K, which then holds nothing of them), later ones BLOCK_K at a time. The last
    item: with LOGPROBS ln p_t(x_t) of positions 0 .. BLOCK_K - 1 (the launcher makes BLOCK_K >= K + 1 then)."""
    t = tl.arange(0, BLOCK_K)
    zero = (b * 0).to(tl.float32)  # (tensors: the running values change type nowhere)
    n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n, lp_t = _accept_positions(
        t, x_first, lp_first, lq_first, k_b, zero, zero + 1.0, zero - float("inf"), b * 0, zero, zero + 1.0,
        zero - float("inf"), b * 0 - 1, b * 0, uniform_ptr, stride_ub, stride_ut, stats_ptr, stride_sp, stride_sr,
        cut_ptr, stride_cp, b, B, K, V, Vd, S1, k_b, greedy, scale, seed_b, row_key, log_v, BLOCK_K, BLOCK_S,
        FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP, LOGPROBS)
    if MANY_K:  # (compiled only for K >= BLOCK_K: the usual K has no loop here, and no registers held for one)
        for t0 in range(BLOCK_K, K + 1, BLOCK_K):
            t = t0 + tl.arange(0, BLOCK_K)
            x, l_p, l_q = _gather_drafts(t, t_row, stride_tt, stride_tv, d_row, stride_dt, stride_dv, tokens_ptr,
                                         stride_xb, stride_xt, b, V, Vd, k_b, greedy, FROM_PROBS, HAS_DRAFT)
            n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n, _ = _accept_positions(
                t, x, l_p, l_q, n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n, uniform_ptr, stride_ub,
                stride_ut, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, b, B, K, V, Vd, S1, k_b, greedy,
                scale, seed_b, row_key, log_v, BLOCK_K, BLOCK_S, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP, False)
    return n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n, lp_t


@triton.jit
def _accept_positions(t, x, l_p, l_q, n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n,
                      uniform_ptr, stride_ub, stride_ut, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp,
                      b, B, K, V, Vd, S1, k_b, greedy, scale, seed_b, row_key, log_v,
                      BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, FROM_PROBS: tl.constexpr,
                      HAS_DRAFT: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr,
                      LOGPROBS: tl.constexpr):
    """Positions `t` [BLOCK_K] of :func:`_accept_prefix`: drafts `x` and the scores at them (`l_p`, `l_q`, from
    :func:`_load_scores`); returns the running (n, row n's statistics, x_n, one_hot_n) updated, and with LOGPROBS
    ln p_t(x_t) [BLOCK_K] (0 without)."""
    decide = t < k_b
    m_t, z_t, ct_t, arg_t, mq_t, zq_t, cq_t, p_x, q_x, one_hot_t, gather = _position_probs(
        t, x, l_p, l_q, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, b, B, K, V, Vd, S1, k_b, greedy, scale,
        BLOCK_K, BLOCK_S, FROM_PROBS, HAS_DRAFT, WARP, 2 if LOGPROBS else 1)
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
    lp_t = tl.zeros([BLOCK_K], tl.float32)
    if LOGPROBS:
        lp_t = _logprob(l_p, m_t, z_t, scale, log_v, FROM_PROBS)
    return n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n, lp_t


@triton.jit
def _fold_and_write(ws_ptr, out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, key, idx, mass,
                    p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, b, K, V, Vd, S2, n, k_b, x_n, one_hot_n,
                    m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, lp_ptr, stride_lb, stride_lt, lp_t,
                    log_v, EPS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, FROM_PROBS: tl.constexpr,
                    HAS_DRAFT: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr,
                    LOGPROBS: tl.constexpr):
    """Fold a program's race result (best key, its id, the mass raced) into row b's workspace [3] int64; the last
    program of the row reads it back, resets it to zero, falls back to p (or uniform) where the residual has no mass,
    and writes the row (and its log-probabilities with LOGPROBS)."""
    ws = ws_ptr + b * WS_SLOT
    # The two data atomics are relaxed (in flight together); the counter's acq_rel orders them: the last program's
    # acquire sees every program's key and mass, and its relaxed reads-and-resets go out together too.
    _fold(ws, key, idx, mass)
    done = tl.atomic_add(ws + 2, 1, sem="acq_rel")
    if done == S2 - 1:
        packed = tl.atomic_xchg(ws, 0, sem="relaxed")
        total = tl.atomic_xchg(ws + 1, 0, sem="relaxed")
        tl.atomic_xchg(ws + 2, 0, sem="relaxed")
        next_token = _fallback_draw(_unpack_id(packed), total, p_row, stride_tv, q_row, stride_dv, noise_row,
                                    stride_ev, V, Vd, n, k_b, x_n, one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale,
                                    seed_b, row_key, EPS, BLOCK_V, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
        _write_row(out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, b, K, n, next_token,
                   BLOCK_K, False)
        if LOGPROBS:
            lp_next = _logprob(_score_at(p_row, stride_tv, next_token, FROM_PROBS), m_p, z_p, scale, log_v,
                               FROM_PROBS)
            _write_logprobs(lp_ptr, stride_lb, stride_lt, b, K, n, lp_t, lp_next, BLOCK_K)
