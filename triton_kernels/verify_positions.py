"""Launch 2's values per position, and its output rows: the drafts and the scores at them, the split statistics
combined, p_t(x_t) and q_t(x_t) of BLOCK_K positions at once, the log-probabilities, and the writers of a row's
tokens and log-probabilities. Token verification (``verify_token``) and block verification (``verify_block``) share
them; the kernel is ``verify_kernel._verify_kernel``.

Scores are logits (NaN -> -inf, +inf -> the largest float32) or, FROM_PROBS, probabilities clamped to [0, 1]. From
logits, p = exp2((l - m) * scale) / z, scale = log2(e) / T, with the row's max m and sum of exponentials z combined
from launch 1's S1 split statistics (``stats_kernel``: [2 (3), rows, S1] float32, 8 * S1 bytes a row, read from
cache), and 0 below the warpers' cut when WARP (the cut and the kept mass from ``cut_kernel``, 8 bytes a row). A
position whose draft gives x_t no probability (q_t(x_t) = 0: a -inf or NaN logit, an id past the draft's vocabulary)
is one-hot at x_t: accepted with probability p_t(x_t), its residual p_t without x_t, which keeps the output exactly p
whatever made x_t.

Log-probabilities (LOGPROBS; the oracle is ``torch_block.emitted_logprobs``): ln p of each emitted token at its
position, in log space from what the launch holds: (l - m) / T - ln z with the row's max m, its sum of exponentials z
(the kept mass on warped rows, from the cut launch; greedy rows at T = 1 from launch 1, which sums them only then) and
the logit l at the emitted id (the gathered draft logits; one more load for the next token); ln p from probabilities;
-ln V on a row with no mass (a uniform draw). Written as [B, K+1] float32, 0 past the next token; no [B, K+1, V]
tensor exists.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .jit_helpers import INT32_MAX, _finite_logits, _splat

LN2 = tl.constexpr(0.6931471805599453)  # ln x = log2(x) * LN2


@triton.jit
def _combine_stats(stats_ptr, stride_sp, stride_sr, rows, row_mask, S1, scale, BLOCK_S: tl.constexpr,
                   ARG_PLANE: tl.constexpr):
    """Row max (0 when -inf), sum of exponentials (1 when 0) and argmax (greedy rows: its bits in plane ARG_PLANE, 2
    when launch 1 also summed greedy rows for their log-probabilities) from the split statistics."""
    s = tl.arange(0, BLOCK_S)
    mask = row_mask[:, None] & (s < S1)[None, :]
    offs = rows[:, None] * stride_sr + s[None, :]
    m_s = tl.load(stats_ptr + offs, mask=mask, other=-float("inf"))
    second = tl.load(stats_ptr + stride_sp + offs, mask=mask, other=0.0)
    m = tl.max(m_s, axis=1)
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    z = tl.sum(second * tl.exp2((m_s - m_safe[:, None]) * scale), axis=1)
    bits = second
    if ARG_PLANE != 1:
        bits = tl.load(stats_ptr + ARG_PLANE * stride_sp + offs, mask=mask, other=0.0)
    arg = tl.min(tl.where(mask & (m_s == m[:, None]), bits.to(tl.int32, bitcast=True), INT32_MAX), axis=1)
    return m_safe, tl.where(z > 0.0, z, 1.0), arg.to(tl.int64)


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
def _position_probs(t, x, l_p, l_q, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, b, B, K, V, Vd, S1, k_b,
                    greedy, scale, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, FROM_PROBS: tl.constexpr,
                    HAS_DRAFT: tl.constexpr, WARP: tl.constexpr, ARG_PLANE: tl.constexpr):
    """Positions `t` [BLOCK_K]: each target row's and draft row's statistics (max, sum, cut; the target's argmax,
    from plane ARG_PLANE) and p_t(x_t), q_t(x_t) from the scores at the drafts (`l_p`, `l_q`, from
    :func:`_load_scores`): (m_t, z_t, ct_t, arg_t, mq_t, zq_t, cq_t, p_x, q_x, one_hot_t, gather), q_x 1 where the
    draft is one-hot at x_t (`one_hot_t`), 0 where x_t is outside [0, V) or t >= K_b (`gather` false)."""
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
                                         BLOCK_S, ARG_PLANE)
        mq_t, zq_t, _ = _combine_stats(stats_ptr, stride_sp, stride_sr, B * (K + 1) + b * K + t, decide & sampled,
                                       S1, scale, BLOCK_S, 1)
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
    return m_t, z_t, ct_t, arg_t, mq_t, zq_t, cq_t, p_x, q_x, one_hot_t, gather


@triton.jit
def _logprob(score, m, z, scale, log_v, FROM_PROBS: tl.constexpr):
    """ln p of a token from its `score` (:func:`_load_scores`) and its row's max `m`, sum of exponentials `z` (the
    kept mass on warped rows) and log2(e) / T `scale`, in log space: (l - m) / T - ln z; from probabilities ln p.
    -ln V (`log_v`) where the row has no mass (a logit of -inf: every emitted token has a finite one otherwise; a
    probability of 0)."""
    if FROM_PROBS:
        return tl.where(score > 0.0, tl.log(tl.where(score > 0.0, score, 1.0)), -log_v)
    else:
        finite = score > -float("inf")
        return tl.where(finite, ((tl.where(finite, score, m) - m) * scale - tl.log2(z)) * LN2, -log_v)


@triton.jit
def _score_at(row_ptr, stride_v, idx, FROM_PROBS: tl.constexpr):
    """The score of one id of a row (:func:`_load_scores`), as a scalar (loaded through a 2-lane tensor: the
    interpreter needs tensor masks)."""
    lane = tl.arange(0, 2)
    return tl.max(_load_scores(row_ptr, idx + lane * 0, stride_v, lane >= 0, FROM_PROBS), axis=0)


@triton.jit
def _write_row(out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, b, K, n, next_token,
               BLOCK_K: tl.constexpr, ONE_BLOCK: tl.constexpr):
    """tokens[b] = accepted drafts, the next token, then -1; num_accepted[b] = n. ONE_BLOCK: BLOCK_K >= K + 1, no
    loop (block verification's greedy rows: in a loop of one trip Triton 3.6's ptxas put a spill)."""
    if ONE_BLOCK:
        t = tl.arange(0, BLOCK_K)
        x = tl.load(tokens_ptr + b * stride_xb + t * stride_xt, mask=t < n, other=0).to(tl.int64)
        tl.store(out_ptr + b * stride_ob + t * stride_ot, tl.where(t < n, x, tl.where(t == n, next_token, -1)),
                 mask=t <= K)
    else:
        for t0 in range(0, K + 1, BLOCK_K):
            t = t0 + tl.arange(0, BLOCK_K)
            x = tl.load(tokens_ptr + b * stride_xb + t * stride_xt, mask=t < n, other=0).to(tl.int64)
            val = tl.where(t < n, x, tl.where(t == n, next_token, -1))
            tl.store(out_ptr + b * stride_ob + t * stride_ot, val, mask=t <= K)
    tl.store(nacc_ptr + b, n)


@triton.jit
def _write_logprobs(lp_ptr, stride_lb, stride_lt, b, K, n, lp_t, lp_next, BLOCK_K: tl.constexpr):
    """logprobs[b] = ln p_t(x_t) of the n accepted drafts (`lp_t` [BLOCK_K], BLOCK_K >= K + 1), the next token's
    `lp_next`, then 0."""
    t = tl.arange(0, BLOCK_K)
    tl.store(lp_ptr + b * stride_lb + t * stride_lt, tl.where(t < n, lp_t, tl.where(t == n, lp_next, 0.0)),
             mask=t <= K)
