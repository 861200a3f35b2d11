"""Block verification in launch 2 (``verify_kernel._verify_kernel``, BLOCK on; Sun et al., "Block Verification
Accelerates Speculative Decoding", ICLR 2025, arXiv 2403.10444; the oracle is ``specsampler.torch_block``).

Positions 0-indexed: w_0 = 1, w_{i+1} = min(1, w_i p_i(x_i) / q_i(x_i)); r_i = sum_x max(w_i p_i(x) - q_i(x), 0);
h_0 = 1, h_i = r_i / (r_i + 1 - w_i) for 0 < i < K_b (1 where that denominator is not positive), h_{K_b} = w_{K_b};
tau = max{i : i = 0 or eta_i < h_i}, eta_i the acceptance uniform of position i - 1 (Philox stream 0, as token
verification's); the next token from max(w_tau p_tau - q_tau, 0) (the race's fallbacks), or the bonus from p_{K_b}
when tau = K_b. One launch still, grid (B, S2 * (K+1)): program (b, S2 * i + split) owns split `split` of row b's
position i; the residual masses are folded into the race's pass:
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

Bytes: as token verification, but for each sampled row one row pair (V + Vd) * s per candidate row raced (the bonus
row alone, V * s, when tau = K_b is decided from the weights; at most K_b pairs), and 24 * (K+1) bytes of workspace
slots a row touched with atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.random import philox

from .jit_helpers import _to_uniform
from .verify_positions import _logprob, _score_at, _write_logprobs, _write_row
from .verify_race import MASS_SCALE, RACE_WEIGHTED, WS_SLOT, _fallback_draw, _fold, _race, _unpack_id


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
