"""Launch 2, ``_verify_kernel``: acceptance, the first rejection, and the correction or bonus token of every row (the
only launch from probabilities).

Algorithm (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318). p target, q draft,
x_t the drafted tokens, K_b the drafts row b really has, T_b its temperature (0: greedy).

Grid (B, S2): every program of row b first reads the drafts x_t and the scores at them (the call's inputs: with
programmatic dependent launch, before it waits for the launch before), then combines the split statistics of its K+1
target and K draft rows (launch 1, ``stats_kernel``; the warped rows' cuts and kept masses from ``cut_kernel``), or
reads probabilities directly, into p_t(x_t) and q_t(x_t), BLOCK_K positions at a time (the loop over further
positions is compiled only for K + 1 > BLOCK_K), and decides acceptance: u_t * q_t(x_t) < p_t(x_t) (greedy:
x_t == argmax p_t). A position whose draft gives x_t no probability (q_t(x_t) = 0: a -inf or NaN logit, an id past the
draft's vocabulary) is one-hot at x_t: accepted with probability p_t(x_t), and its residual is p_t without x_t, which
keeps the output exactly p whatever made x_t. n is the first rejection, K_b if none. A greedy row (T_b below 2**-126,
where 1 / T_b would overflow, counts as 0) emits argmax p_n and is done.

A sampled row runs the exponential race over its split of row n: the key of id x is r(x) / E_x with
r = max(0, p_n - q_n) (r = p_n for the bonus row) and E_x ~ Exp(1); argmax of the keys is a draw from r / sum(r) with
no normalisation and no prefix sum. Each lane keeps its best key and id across the tiles, the program reduces once and
folds its best (key, id), packed in an int64 so that a larger key and then a lower id wins, and its share of sum(r)
into a per-row workspace with atomics; the last program of the row (an acq_rel counter) reads them back, resets the
workspace to zero and writes the row. Only when sum(r) <= RESIDUAL_EPS (p equals q up to rounding) does that last
program race p_n / E_x over the whole row, and only when p_n has no mass at all 1 / E_x (uniform): the fallbacks cost
nothing on the rows that do not need them, and need no host synchronisation.

Randomness is counter-based: Philox keyed by the seed (per batch or per row). One Philox call (10 rounds) gives the
four uniforms of vocabulary ids 4g .. 4g+3 (counters: group g, position n, row, stream 1); the acceptance uniforms
use stream 0. The mapping from ids to numbers does not depend on the tile width or the splits: the same seed gives
the same tokens in every launch configuration, and a [B] seed makes a row's tokens independent of its place in the
batch. The testing entry (``specsampler._testing``) replaces Philox with given uniforms [B, K] and noise [B, V], which
the torch backend accepts too, so both can be compared token for token.

Bytes, with s the element size of the scores and S1, S2 the split counts: reads the statistics (8 * B*(2K+1) * S1 per
program, from cache), 2K gathered scores, the K drafts, and for each sampled row one residual row pair, (V + Vd) * s
(the whole row pair again, by one program, in the rare fallback); writes the tokens, 8 * B*(K+2), and touches a
workspace of 24 bytes per row with atomics. Nothing of size B*(K+1)*V is allocated; there is no host
synchronisation, and the workspace is zero again after every launch (and never freed: a captured graph may point at
it), so the call can be captured in a CUDA graph. The tokens start at -1 (launch 1 sets them; from probabilities a
fill does), so a row that were never written could not look valid.

Block verification (BLOCK; Sun et al., "Block Verification Accelerates Speculative Decoding", ICLR 2025, arXiv
2403.10444; the oracle is ``specsampler.torch_block``), positions 0-indexed: w_0 = 1, w_{i+1} = min(1, w_i p_i(x_i) /
q_i(x_i)); r_i = sum_x max(w_i p_i(x) - q_i(x), 0); h_0 = 1, h_i = r_i / (r_i + 1 - w_i) for 0 < i < K_b (1 where that
denominator is not positive), h_{K_b} = w_{K_b}; tau = max{i : i = 0 or eta_i < h_i}, eta_i the acceptance uniform
of position i - 1 (stream 0, as above); the next token from max(w_tau p_tau - q_tau, 0) (the same fallbacks), or the
bonus from p_{K_b} when tau = K_b. One launch still, grid (B, S2 * (K+1)): program (b, S2 * i + split) owns split
`split` of row b's position i; the residual masses are folded into the race's pass:
- every program of a sampled row holds all K + 1 positions at once (the launcher makes BLOCK_K >= K + 1: no loop over
  K), computes p_t(x_t), q_t(x_t) as token verification does, the weights w_t (a float32 product in the oracle's
  order) and eta_t: scalars every program derives alike;
- tau = K_b exactly when eta_{K_b} < w_{K_b}: then the bonus row alone is raced. Otherwise h_i <= w_i, so only the
  positions with eta_i < w_i can pass, and a position with w_i = 1 (h_i = 1) always does: no position below the
  highest such s (or 0) can be tau. The candidates are s and the positions above it with eta_i < w_i;
- a program whose position i is raced makes one pass over its split of row i that accumulates both r_i (the race's
  mass, fixed point) and the race's best (key, id) over max(w_i p_i - q_i, 0) (Philox counters at position i; the
  test hook's noise[b] for every row, as the oracle), folded into the row's workspace slot of position i (K + 1
  slots a row, the counter in slot 0); the others only count. The raced rows go in parallel, and each program's race
  is straight-line code like token verification's (a loop over the candidates in one program held 128 to 172
  registers at sm_90);
- the row's last program reads back and resets every slot the row can have touched, computes h_i from the masses,
  picks tau, takes row tau's winner (or runs the fallback race over p_tau) and writes the row. Greedy rows: the
  argmax prefix, as in token verification.
Token verification keeps its own code path: BLOCK and LOGPROBS are constexprs, and without them the launch compiles
to the code it had before (bench/results/compile_offline_block_triton*.txt).

Log-probabilities (LOGPROBS; the oracle is ``torch_block.emitted_logprobs``): ln p of each emitted token at its
position, in log space from what the launch holds: (l - m) / T - ln z with the row's max m, its sum of exponentials z
(the kept mass on warped rows, from the cut launch; greedy rows at T = 1 from launch 1, which sums them only then) and
the logit l at the emitted id (the gathered draft logits; one more load for the next token); ln p from probabilities;
-ln V on a row with no mass (a uniform draw). Written as [B, K+1] float32, 0 past the next token; no [B, K+1, V]
tensor exists.

Bytes of block verification: as token verification, but for each sampled row one row pair (V + Vd) * s per candidate
row raced (the bonus row alone, V * s, when tau = K_b is decided from the weights; at most K_b pairs), and 24 * (K+1)
bytes of workspace slots a row touched with atomics. With log-probabilities 4 * B*(K+1) more bytes written and one
score read per row; from logits, launch 1 reads nothing more (greedy rows sum the tiles they already load).

References: vLLM's Triton rejection sampler (vllm/v1/sample/rejection_sampler.py); FlashInfer's
chain_speculative_sampling; Triton's tutorial 04-low-memory-dropout (in-kernel Philox); Salmon et al. 2011 (Philox);
the exponential race (Gumbel-max with exponentials: argmax r(x) / E_x).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.random import philox

from . import launching
from .constants import BLOCK_K, BLOCK_S, RESIDUAL_EPS
from .jit_helpers import INT32_MAX, _finite_logits, _num_drafts, _scaled_temperature, _splat, gdc_wait

MASS_SCALE = tl.constexpr(1099511627776.0)  # 2**40: the residual mass is summed in fixed point (exact, any order)
UNIFORM_SCALE = tl.constexpr(5.9604644775390625e-08)  # 2**-24: uniforms are multiples of it
RNG_GROUP = tl.constexpr(4)  # vocabulary ids per Philox call (its four 32-bit outputs)
LN2 = tl.constexpr(0.6931471805599453)  # ln x = log2(x) * LN2
WS_SLOT = tl.constexpr(3)  # int64 words per workspace slot: best packed key, mass in 2**-40, programs done (slot 0)


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


# What a race draws from: the residual max(0, p - q), p alone, uniform, or block verification's residual
# max(0, w p - q).
RACE_RESIDUAL = tl.constexpr(0)
RACE_P = tl.constexpr(1)
RACE_UNIFORM = tl.constexpr(2)
RACE_WEIGHTED = tl.constexpr(3)


@triton.jit
def _race_dist(t_row, stride_tv, d_row, stride_dv, offs, mask, q_full, q_one_hot, x_n, Vd, m_p, z_p, cut_p, m_q, z_q,
               cut_q, scale, w, DIST: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
               WARP: tl.constexpr):
    """The raced distribution at `offs`, unnormalised: max(0, p - q), p, 1, or max(0, w p - q) (RACE_WEIGHTED); 0 where
    `mask` is off. q is the draft's row where `q_full`, one-hot at x_n where `q_one_hot` (tensors of one value each),
    else 0 (the bonus row)."""
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
def _race_step(best, arg, mass, dist, e, offs, mask):
    """One tile of one lane set: a lane's key replaces its best only when strictly larger (its lowest id on ties)."""
    key = tl.where(mask, dist / e, -1.0)
    better = key > best
    return tl.where(better, key, best), tl.where(better, offs, arg), mass + dist


@triton.jit
def _race(t_row, stride_tv, d_row, stride_dv, noise_row, stride_ev, lo, hi, Vd, n, k_b, x_n, one_hot_n, m_p, z_p,
          cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, w, DIST: tl.constexpr, BLOCK_V: tl.constexpr,
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
                        z_p, cut_p, m_q, z_q, cut_q, scale, w, DIST, FROM_PROBS, HAS_DRAFT, WARP)
        d1 = _race_dist(t_row, stride_tv, d_row, stride_dv, offs1, offs1 < hi, q_full, q_one_hot, x_n32, Vd, m_p,
                        z_p, cut_p, m_q, z_q, cut_q, scale, w, DIST, FROM_PROBS, HAS_DRAFT, WARP)
        d2 = _race_dist(t_row, stride_tv, d_row, stride_dv, offs2, offs2 < hi, q_full, q_one_hot, x_n32, Vd, m_p,
                        z_p, cut_p, m_q, z_q, cut_q, scale, w, DIST, FROM_PROBS, HAS_DRAFT, WARP)
        d3 = _race_dist(t_row, stride_tv, d_row, stride_dv, offs3, offs3 < hi, q_full, q_one_hot, x_n32, Vd, m_p,
                        z_p, cut_p, m_q, z_q, cut_q, scale, w, DIST, FROM_PROBS, HAS_DRAFT, WARP)
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


@triton.jit
def _fold(slot, key, idx, mass):
    """Fold a program's race result (best key, its id, the mass raced) into a workspace slot [3] int64 (best packed
    key, mass in 2**-40). Relaxed: the two atomics are in flight together; the row's counter orders them."""
    tl.atomic_max(slot, _pack(tl.maximum(key, 0.0), idx), sem="relaxed")
    mass = tl.where(mass == mass, tl.minimum(mass, 4.0), 0.0)
    tl.atomic_add(slot + 1, (mass * MASS_SCALE).to(tl.int64), sem="relaxed")


@triton.jit
def _unpack_id(packed):
    """The id of a packed (key, id) (:func:`_pack`)."""
    return ((packed & INT32_MAX) * -1 + INT32_MAX).to(tl.int64)  # (tensor first: the interpreter)


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


@triton.jit
def _score_at(row_ptr, stride_v, idx, FROM_PROBS: tl.constexpr):
    """The score of one id of a row (:func:`_load_scores`), as a scalar (loaded through a 2-lane tensor: the
    interpreter needs tensor masks)."""
    lane = tl.arange(0, 2)
    return tl.max(_load_scores(row_ptr, idx + lane * 0, stride_v, lane >= 0, FROM_PROBS), axis=0)


@triton.jit
def _write_logprobs(lp_ptr, stride_lb, stride_lt, b, K, n, lp_t, lp_next, BLOCK_K: tl.constexpr):
    """logprobs[b] = ln p_t(x_t) of the n accepted drafts (`lp_t` [BLOCK_K], BLOCK_K >= K + 1), the next token's
    `lp_next`, then 0."""
    t = tl.arange(0, BLOCK_K)
    tl.store(lp_ptr + b * stride_lb + t * stride_lt, tl.where(t < n, lp_t, tl.where(t == n, lp_next, 0.0)),
             mask=t <= K)


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


@triton.jit
def _block_weights(t, ratio, k_b):
    """w [BLOCK_K]: w_0 = 1, w_{j+1} = min(1, w_j ratio_j) for j < K_b (0 past K_b), in float32 and in the oracle's
    order (a product per position, not a scan in log space: the decisions compare w with uniforms). A loop, not
    unrolled: an unrolled one holds a predicate per position, which ptxas spills."""
    w = tl.sum(ratio * 0.0, axis=0) + 1.0
    w_t = tl.where(t == 0, 1.0, 0.0)
    for j in range(0, k_b):
        w = tl.minimum(w * tl.sum(tl.where(t == j, ratio, 0.0), axis=0), 1.0)
        w_t = tl.where(t == j + 1, w, w_t)
    return w_t


@triton.jit
def _block_uniforms(t, k_b, uniform_ptr, stride_ub, stride_ut, b, seed_b, row_key, GIVEN_RANDOM: tl.constexpr):
    """eta_t [BLOCK_K] = the acceptance uniform of position t - 1 (token verification's: Philox stream 0, or the
    given uniforms) for 1 <= t <= K_b; 1 elsewhere (never below a weight)."""
    has_eta = (t >= 1) & (t <= k_b)
    if GIVEN_RANDOM:
        eta = tl.load(uniform_ptr + b * stride_ub + (t - 1) * stride_ut, mask=has_eta, other=1.0)
    else:
        zero = (t * 0).to(tl.uint32)
        bits, _, _, _ = philox(seed_b, zero, (t - 1).to(tl.uint32), zero + row_key.to(tl.uint32), zero)
        eta = tl.where(has_eta, _to_uniform(bits, False), 1.0)
    return eta


@triton.jit
def _at(t, i, values):
    """values[i] of a [BLOCK_K] vector, as a scalar."""
    return tl.sum(tl.where(t == i, values, 0), axis=0)


@triton.jit
def _block_row(t, x, m_t, z_t, ct_t, mq_t, zq_t, cq_t, p_x, q_x, one_hot_t, gather, lp_t, t_row, stride_tt, stride_tv,
               d_row, stride_dt, stride_dv, noise_row, stride_ev, uniform_ptr, stride_ub, stride_ut, ws_row, out_ptr,
               stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, lp_ptr, stride_lb, stride_lt,
               b, K, V, Vd, S2, i, lo, hi, k_b, scale, seed_b, row_key, log_v, EPS: tl.constexpr,
               BLOCK_V: tl.constexpr,
               BLOCK_K: tl.constexpr, FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr,
               GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr, LOGPROBS: tl.constexpr):
    """Block verification of a sampled row (positions `t` [BLOCK_K], BLOCK_K >= K + 1, with
    :func:`_position_probs`' vectors) by one of its S2 * (K+1) programs, the one of ids [lo, hi) of position i: the
    weights w_t, the raced rows, one pass over its split of row i if that is raced (residual mass and race at once,
    folded into the row's slot i), and, in the row's last program, tau, the next token and the row's output."""
    ratio = tl.where(gather, p_x / tl.where(gather, q_x, 1.0), 0.0)  # p_t(x_t) / q_t(x_t); 0 for ids outside [0, V)
    w_t = _block_weights(t, ratio, k_b)
    eta = _block_uniforms(t, k_b, uniform_ptr, stride_ub, stride_ut, b, seed_b, row_key, GIVEN_RANDOM)
    # tau = K_b iff eta_{K_b} < h_{K_b} = w_{K_b}: then only the bonus row is raced.
    bonus = (k_b == 0) | (_at(t, k_b, eta) < _at(t, k_b, w_t))
    # h_i <= w_i, so position i can only pass when eta_i < w_i; and w_i = 1 gives h_i = 1: it passes, and no position
    # below the highest such s (or 0) can be tau. The candidates: s and the positions above it with eta_i < w_i.
    sure = (t == 0) | ((t < k_b) & (w_t == 1.0) & (eta < 1.0))
    s = tl.max(tl.where(sure, t, 0), axis=0)
    cand = (t == s) | ((t > s) & (t < k_b) & (eta < w_t))
    # This program's part (grid (B, S2 * (K+1)): program (b, S2 * i + split)): its split of row i, if row i is raced.
    # The bonus row alone (w = 1, q = 0: p), or a candidate's residual max(0, w_i p_i - q_i): its mass (r_i, for h_i)
    # and its race (the next token, should tau be i) in one pass, with the same noise for every row. The raced rows go
    # in parallel, each program's race straight-line code as token verification's (a loop over the candidates inside
    # a program held 128 to 172 registers at sm_90, and raced them one after the other).
    raced = tl.where(bonus, t == k_b, cand)
    if _at(t, i, raced.to(tl.int32)) != 0:
        key, idx, mass = _race(t_row + i * stride_tt, stride_tv, d_row + i * stride_dt, stride_dv, noise_row,
                               stride_ev, lo, hi, Vd, i, k_b, _at(t, i, x), _at(t, i, one_hot_t.to(tl.int64)),
                               _at(t, i, m_t), _at(t, i, z_t), tl.max(tl.where(t == i, ct_t, -float("inf")), axis=0),
                               _at(t, i, mq_t), _at(t, i, zq_t), tl.max(tl.where(t == i, cq_t, -float("inf")), axis=0),
                               scale, seed_b, row_key, tl.where(i < k_b, _at(t, i, w_t), 1.0), RACE_WEIGHTED,
                               BLOCK_V, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)
        _fold(ws_row + i * WS_SLOT, key, idx, mass)
    done = tl.atomic_add(ws_row + 2, 1, sem="acq_rel")  # (the row's counter, in slot 0: every program counts)
    if done == S2 * (K + 1) - 1:
        # The slots this row can have touched, read back and reset: every other program of the row is done (the
        # counter's acquire), so plain stores reset them; the loads are volatile (relaxed, from L2: never a stale L1
        # line). No vector atomics: a [BLOCK_K] tensor is replicated across threads, and only one copy of a
        # read-and-reset would see the value.
        live = t <= k_b
        slot = ws_row + t * WS_SLOT
        keys = tl.load(slot, mask=live, other=0, volatile=True)
        masses = tl.load(slot + 1, mask=live, other=0, volatile=True)
        zeros = tl.zeros([BLOCK_K], tl.int64)
        tl.store(slot, zeros, mask=live)
        tl.store(slot + 1, zeros, mask=live)
        tl.atomic_xchg(ws_row + 2, 0, sem="relaxed")
        # h_i = r_i / (r_i + 1 - w_i) (1 where that is not positive), in the oracle's order of operations.
        r = masses.to(tl.float32) * (1.0 / MASS_SCALE)
        denom = (r + 1.0) - w_t
        h = tl.where(denom > 0.0, r / tl.where(denom > 0.0, denom, 1.0), 1.0)
        passed = (t == s) | (cand & (eta < h))
        tau = tl.where(bonus, k_b, tl.max(tl.where(passed, t, 0), axis=0))
        m_p = _at(t, tau, m_t)
        z_p = _at(t, tau, z_t)
        cut_p = tl.max(tl.where(t == tau, ct_t, -float("inf")), axis=0)
        p_row = t_row + tau * stride_tt
        next_token = _fallback_draw(_unpack_id(_at(t, tau, keys)), _at(t, tau, masses), p_row, stride_tv, d_row,
                                    stride_dv, noise_row, stride_ev, V, Vd, tau, k_b, k_b * 0, k_b * 0, m_p, z_p,
                                    cut_p, 0.0, 1.0, -float("inf"), scale, seed_b, row_key, EPS, BLOCK_V, FROM_PROBS,
                                    HAS_DRAFT, GIVEN_RANDOM, WARP)
        _write_row(out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, b, K, tau, next_token,
                   BLOCK_K, False)
        if LOGPROBS:
            lp_next = _logprob(_score_at(p_row, stride_tv, next_token, FROM_PROBS), m_p, z_p, scale, log_v,
                               FROM_PROBS)
            _write_logprobs(lp_ptr, stride_lb, stride_lt, b, K, tau, lp_t, lp_next, BLOCK_K)


@triton.jit(do_not_specialize=["B", "K", "V", "Vd", "tiles", "S1", "S2", "temperature", "seed",
                               "stride_xb", "stride_xt", "stride_ub", "stride_ut", "stride_eb", "stride_ev",
                               "stride_sp", "stride_sr", "stride_cp", "stride_ob", "stride_ot", "stride_lb",
                               "stride_lt"])
def _verify_kernel(
    target_ptr, stride_tb, stride_tt, stride_tv,  # [B, K+1, V] logits, or probabilities when FROM_PROBS
    draft_ptr, stride_db, stride_dt, stride_dv,  # [B, K, Vd] like the target, read when HAS_DRAFT
    tokens_ptr, stride_xb, stride_xt,  # [B, K] int32/int64 drafted tokens
    num_draft_ptr,  # [B] int, read when RAGGED
    temp_ptr,  # [B] float32, read when ROW_TEMP
    seed_ptr,  # [B] int64, read when ROW_SEED
    uniform_ptr, stride_ub, stride_ut,  # [B, K] float32 acceptance uniforms, read when GIVEN_RANDOM
    noise_ptr, stride_eb, stride_ev,  # [B, V] float32 exponential noise, read when GIVEN_RANDOM
    stats_ptr, stride_sp, stride_sr,  # [2 (3), B*(K+1) + B*K, S1] float32 split statistics, read unless FROM_PROBS
    cut_ptr, stride_cp,  # [2, B*(K+1) + B*K] float32 warped rows' cuts and sums (contiguous rows), read when WARP
    ws_ptr,  # [>= B (B*(K+1) when BLOCK), 3] int64 workspace slots (best packed key, residual mass in 2**-40,
    #          programs done), zero between launches; BLOCK: slot b*(K+1)+i for row b's position i, the counter in i = 0
    out_ptr, stride_ob, stride_ot,  # [B, K+1] int64 tokens
    nacc_ptr,  # [B] int64 number accepted
    lp_ptr, stride_lb, stride_lt,  # [B, K+1] float32 log-probabilities, written when LOGPROBS
    B, K, V, Vd, tiles, S1, S2, temperature, seed,
    EPS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
    FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr,
    ROW_SEED: tl.constexpr, GIVEN_RANDOM: tl.constexpr, WARP: tl.constexpr, PDL: tl.constexpr, MANY_K: tl.constexpr,
    BLOCK: tl.constexpr, LOGPROBS: tl.constexpr,
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
    log_v = 0.0
    if LOGPROBS:
        log_v = tl.log(V.to(tl.float32))

    # 1. Acceptance: n, and the statistics of row n. The drafts and the scores at them are the call's inputs: they
    # are read first, and with PDL before waiting for the launches before (their statistics, cuts, the -1 start).
    x_first, lp_first, lq_first = _gather_drafts(tl.arange(0, BLOCK_K), t_row, stride_tt, stride_tv, d_row, stride_dt,
                                                 stride_dv, tokens_ptr, stride_xb, stride_xt, b, V, Vd, k_b, greedy,
                                                 FROM_PROBS, HAS_DRAFT)
    if PDL:
        gdc_wait()
    if BLOCK:  # (one block of positions: the launcher makes BLOCK_K >= K + 1)
        t = tl.arange(0, BLOCK_K)
        m_t, z_t, ct_t, arg_t, mq_t, zq_t, cq_t, p_x, q_x, one_hot_t, gather = _position_probs(
            t, x_first, lp_first, lq_first, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, b, B, K, V, Vd, S1,
            k_b, greedy, scale, BLOCK_K, BLOCK_S, FROM_PROBS, HAS_DRAFT, WARP, 2 if LOGPROBS else 1)
        lp_t = tl.zeros([BLOCK_K], tl.float32)
        if LOGPROBS:
            lp_t = _logprob(lp_first, m_t, z_t, scale, log_v, FROM_PROBS)
        if greedy:  # the argmax prefix, as token verification
            if split == 0:
                n = tl.minimum(k_b, tl.min(tl.where((t < k_b) & ~(gather & (x_first == arg_t)), t, K + 1), axis=0))
                arg_n = _at(t, n, arg_t)
                _write_row(out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, b, K, n, arg_n,
                           BLOCK_K, True)
                if LOGPROBS:
                    lp_next = _logprob(_score_at(t_row + n * stride_tt, stride_tv, arg_n, FROM_PROBS),
                                       _at(t, n, m_t), _at(t, n, z_t), scale, log_v, FROM_PROBS)
                    _write_logprobs(lp_ptr, stride_lb, stride_lt, b, K, n, lp_t, lp_next, BLOCK_K)
        else:
            i = split // S2  # (program (b, S2 * i + split_v): position i, split split_v)
            lo = ((split - i * S2) * tiles * BLOCK_V).to(tl.int32)  # ids of a row fit 32 bits: fewer registers
            hi = tl.minimum(lo + tiles * BLOCK_V, V)
            _block_row(t, x_first, m_t, z_t, ct_t, mq_t, zq_t, cq_t, p_x, q_x, one_hot_t, gather, lp_t, t_row,
                       stride_tt, stride_tv, d_row, stride_dt, stride_dv, noise_ptr + b * stride_eb, stride_ev,
                       uniform_ptr, stride_ub, stride_ut, ws_ptr + b * (K + 1) * WS_SLOT, out_ptr, stride_ob, stride_ot,
                       tokens_ptr, stride_xb, stride_xt, nacc_ptr, lp_ptr, stride_lb, stride_lt, b, K, V, Vd, S2, i,
                       lo, hi, k_b, scale, seed_b, row_key, log_v, EPS, BLOCK_V, BLOCK_K, FROM_PROBS, HAS_DRAFT,
                       GIVEN_RANDOM, WARP, LOGPROBS)
    else:
        n, m_p, z_p, cut_p, arg_p, m_q, z_q, cut_q, x_n, one_hot_n, lp_t = _accept_prefix(
            t_row, stride_tt, stride_tv, d_row, stride_dt, stride_dv, tokens_ptr, stride_xb, stride_xt,
            uniform_ptr, stride_ub, stride_ut, stats_ptr, stride_sp, stride_sr, cut_ptr, stride_cp, b, B, K, V, Vd,
            S1, k_b, greedy, scale, seed_b, row_key, x_first, lp_first, lq_first, log_v, BLOCK_K, BLOCK_S,
            FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP, MANY_K, LOGPROBS)
        if greedy:
            if split == 0:
                _write_row(out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, b, K, n, arg_p,
                           BLOCK_K, False)
                if LOGPROBS:
                    lp_next = _logprob(_score_at(t_row + n * stride_tt, stride_tv, arg_p, FROM_PROBS), m_p, z_p,
                                       scale, log_v, FROM_PROBS)
                    _write_logprobs(lp_ptr, stride_lb, stride_lt, b, K, n, lp_t, lp_next, BLOCK_K)
        else:
            # 2. The race over this program's split of row n.
            lo = (split * tiles * BLOCK_V).to(tl.int32)  # ids within a row fit 32 bits: fewer registers per element
            hi = tl.minimum(lo + tiles * BLOCK_V, V)
            p_row = t_row + n * stride_tt
            q_row = d_row + n * stride_dt
            noise_row = noise_ptr + b * stride_eb
            key, idx, mass = _race(p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, lo, hi, Vd, n, k_b, x_n,
                                   one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, 1.0,
                                   RACE_RESIDUAL, BLOCK_V, FROM_PROBS, HAS_DRAFT, GIVEN_RANDOM, WARP)

            # 3. Fold into the row's workspace; the last program of the row reads it back, resets it and writes.
            _fold_and_write(ws_ptr, out_ptr, stride_ob, stride_ot, tokens_ptr, stride_xb, stride_xt, nacc_ptr, key,
                            idx, mass, p_row, stride_tv, q_row, stride_dv, noise_row, stride_ev, b, K, V, Vd, S2, n,
                            k_b, x_n, one_hot_n, m_p, z_p, cut_p, m_q, z_q, cut_q, scale, seed_b, row_key, lp_ptr,
                            stride_lb, stride_lt, lp_t, log_v, EPS, BLOCK_V, BLOCK_K, FROM_PROBS, HAS_DRAFT,
                            GIVEN_RANDOM, WARP, LOGPROBS)


def _seed_arg(seed: int) -> int:
    """Every int seed as a distinct value in [2**62, 2**63), so that Triton always types it int64."""
    return (seed % (1 << 62)) + (1 << 62)


def verify_rows(target, draft_tokens, draft, num_draft_tokens, temperature, seed, stats=None, uniforms=None,
                noise=None, block_v=None, num_splits=None, tokens=None, cuts=None, pdl=None, block=False,
                logprobs=False):
    """Launch 2: acceptance, first rejection and the correction or bonus token of every row.

    Parameters
    ----------
    target : torch.Tensor
        [B, K+1, V] logits (with `stats` from :func:`~.stats_kernel.row_stats`) or probabilities (``stats=None``).
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
        The output of :func:`~.stats_kernel.row_stats` when `target` holds logits.
    uniforms, noise : torch.Tensor or None
        Test hook: [B, K] float32 uniforms and [B, V] float32 positive noise replacing Philox.
    block_v, num_splits : int or None
        Tile width and vocabulary splits per row; None picks them for the device.
    tokens : torch.Tensor or None
        [B, K+1] int64 contiguous output already set to -1 (by :func:`~.stats_kernel.row_stats`); None allocates
        one at -1.
    cuts : torch.Tensor or None
        The output of :func:`~.cut_kernel.warp_cuts` when the rows are warped.
    pdl : bool or None
        Launch as a programmatic dependent launch of the launch before (from logits only); None: as
        ``launching.PDL`` and the device decide.
    block : bool
        Block verification (see the module docstring) instead of token verification.
    logprobs : bool
        Also return the emitted tokens' log-probabilities; from logits, `stats` must come from
        :func:`~.stats_kernel.row_stats` with ``logprobs=True`` (greedy rows' sums).

    Returns
    -------
    tokens : torch.Tensor
        [B, K+1] int64, -1 padded.
    num_accepted : torch.Tensor
        [B] int64.
    logprobs : torch.Tensor
        Only with `logprobs`: [B, K+1] float32, ln p of each emitted token at its position, 0 at padding.
    """
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    device = target.device
    greedy_only = not isinstance(temperature, torch.Tensor) and temperature == 0.0 and stats is not None
    if greedy_only:
        num_splits = 1  # greedy rows only: split 0 writes the row, there is no race to share
    block_v, s2, tiles, num_warps = launching.launch_config("race", device.type, device.index, batch, vocab,
                                                            target.itemsize, block_v, num_splits)
    if tokens is None:
        tokens = torch.full((batch, k_plus_1), -1, dtype=torch.int64, device=device)  # a row never written reads -1
    num_accepted = torch.empty(batch, dtype=torch.int64, device=device)
    # Every row's output is written by one of its programs: no fill for the log-probabilities.
    lp = torch.empty(batch, k_plus_1, dtype=torch.float32, device=device) if logprobs else None
    given = uniforms is not None
    if given and (uniforms.shape != (batch, k) or noise is None or noise.shape != (batch, vocab)):
        raise ValueError(f"uniforms must be [B, K] = {(batch, k)} and noise [B, V] = {(batch, vocab)}")
    if not batch:
        return (tokens, num_accepted, lp) if logprobs else (tokens, num_accepted)
    # Block verification and log-probabilities hold every position at once (no loop over K): BLOCK_K >= K + 1.
    block_k = max(BLOCK_K, triton.next_power_of_2(k_plus_1)) if block or logprobs else BLOCK_K
    lp_arg = lp if lp is not None else num_accepted  # (absent: a dummy pointer, never written)
    d = draft if draft is not None else target  # (absent tensors: a dummy pointer, never read)
    u = uniforms if given else target
    e = noise if given else target
    stats_t, s1 = stats if stats is not None else (target, 1)
    c = cuts if cuts is not None else stats_t
    row_temp = isinstance(temperature, torch.Tensor)
    row_seed = isinstance(seed, torch.Tensor)
    args = (target, *target.stride(), d, *d.stride(), draft_tokens, *draft_tokens.stride(),
            num_draft_tokens if num_draft_tokens is not None else target, temperature if row_temp else target,
            seed if row_seed else target, u, *u.stride()[:2], e, *e.stride()[:2], stats_t, *stats_t.stride()[:2],
            c, c.stride(0), launching.workspace(device, batch * k_plus_1 if block else batch), tokens, k_plus_1, 1,
            num_accepted, lp_arg, k_plus_1, 1, batch, k, vocab, d.shape[2], tiles, s1, s2,
            0.0 if row_temp else float(temperature), 0 if row_seed else _seed_arg(seed))
    pdl = stats is not None and launching.use_pdl(device, pdl)  # (from probabilities no launch before to overlap)
    constexprs = dict(EPS=RESIDUAL_EPS, BLOCK_V=block_v, BLOCK_K=block_k, BLOCK_S=BLOCK_S, FROM_PROBS=stats is None,
                      HAS_DRAFT=draft is not None, RAGGED=num_draft_tokens is not None, ROW_TEMP=row_temp,
                      ROW_SEED=row_seed, GIVEN_RANDOM=given, WARP=cuts is not None, PDL=pdl,
                      MANY_K=k_plus_1 > block_k, BLOCK=bool(block), LOGPROBS=bool(logprobs))
    # Block verification: S2 programs for each position of a row (a raced row each, at most; the rest only count).
    parts = s2 * k_plus_1 if block and not greedy_only else s2
    launching.launch(_verify_kernel, (batch, parts), args, constexprs, num_warps, device, launch_pdl=pdl)
    return (tokens, num_accepted, lp) if logprobs else (tokens, num_accepted)
