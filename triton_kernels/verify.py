"""Fused speculative-decoding verification: at most two Triton launches from logits, one from probabilities.

Algorithm (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318). p target, q draft,
x_t the drafted tokens, K_b the drafts row b really has, T_b its temperature (0: greedy).

Launch 1, ``_row_stats_kernel`` (logits only), grid (B*(K+1) + B*K, S1): program (row, split) walks one split of
one target or draft row in BLOCK_V tiles (whole tiles without a mask, so aligned rows load in 128-bit vectors, then
the row's partial tile) and writes that split's max, sum of exp((l - max) / T) and argmax (lowest index on ties).
Rows no decision can reach (t > K_b; draft rows of greedy rows) are skipped. Padding lanes load -inf, NaN is read as
-inf and +inf as the largest float32, so no padding lane ever wins a max or an argmax, and a row that is all -inf
has sum 0: probability 0 everywhere.

Launch 2, ``_verify_kernel``, grid (B, S2): every program of row b combines the split statistics of its K+1 target
and K draft rows (or reads probabilities directly), gathers p_t(x_t) and q_t(x_t), and decides acceptance:
u_t * q_t(x_t) < p_t(x_t) (greedy: x_t == argmax p_t). n is the first rejection, K_b if none. A greedy row emits
argmax p_n and is done. A sampled row runs the exponential race over its split of row n: the key of id x is
r(x) / E_x with r = max(0, p_n - q_n) (r = p_n for the bonus row) and E_x ~ Exp(1); argmax of the keys is a draw
from r / sum(r) with no normalisation and no prefix sum. The program also races p_n / E_x (the fallback when
sum(r) <= RESIDUAL_EPS, i.e. p equals q up to rounding) and 1 / E_x (uniform: the fallback when p_n has no mass at
all). Each program folds its best (key, id) pairs, packed in an int64 so that a larger key and then a lower id wins,
and the masses into a per-row workspace with atomics; the last program of the row (an acq_rel counter) reads them
back, resets the workspace to zero and writes the row.

Randomness is counter-based: Philox keyed by the seed (per batch or per row) with counters (vocab id, position,
row, stream); the same seed gives the same tokens, and nothing is drawn on the host. A test hook replaces it with
given uniforms [B, K] and noise [B, V], which the torch backend accepts too, so both can be compared token for token.

Bytes per launch, with s the element size of the scores and S1, S2 the split counts:
- launch 1 reads each needed logit once, at most B*(K+1)*V*s + B*K*Vd*s, and writes 12 * B*(2K+1) * S1;
- launch 2 reads the statistics (12 * B*(2K+1) * S1 per program, from cache), 2K gathered scores, the K drafts, and
  for each sampled row one residual row pair, (V + Vd) * s; it writes the tokens, 8 * B*(K+2), and touches a
  workspace of 48 bytes per row with atomics.
From probabilities there is only launch 2. Nothing of size B*(K+1)*V is allocated; there is no host synchronisation,
and the workspace is zero again after every launch, so the call can be captured in a CUDA graph.

References: vLLM's Triton rejection sampler (vllm/v1/sample/rejection_sampler.py) and the fix for padding lanes
winning a tie (GHSA-8wr5-jm2h-8r4f); FlashInfer's chain_speculative_sampling; Triton's tutorials 02-fused-softmax
and 04-low-memory-dropout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.random import philox

RESIDUAL_EPS = 1e-6  # keep equal to specsampler.torch_backend.RESIDUAL_EPS (a test checks)
BLOCK_K = 16  # positions decided per step of the loop over K
BLOCK_S = 32  # the most statistics splits per row (S1 <= BLOCK_S)
# Tile widths on GPUs (8 warps from 2048 up, else 4). The race of launch 2 holds more per element than launch 1's
# statistics (Philox state, three keys): at 2048 with 8 warps it takes up to ~190 registers with Triton 3.6 on sm_90
# (an earlier form spilled there); 512 with 4 warps stays within 128 with no spill in a loop for sm_80 and sm_90 with
# Triton 3.6 and 3.9, and gives B = 1 four times as many programs (bench/compile_offline.py).
GPU_BLOCK_V_STATS = 2048
GPU_BLOCK_V_RACE = 512


@triton.jit
def _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP: tl.constexpr):
    """Returns (T, 1 / T) for row b, with 1 / T = 1 on greedy rows (T = 0)."""
    if ROW_TEMP:
        temp = tl.load(temp_ptr + b).to(tl.float32)
    else:
        temp = tl.cast(temperature, tl.float32)
    inv_t = 1.0 / tl.where(temp == 0.0, 1.0, temp)
    return temp, inv_t


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
    return tl.minimum(tl.where(x == x, x, -float("inf")), 3.4028234663852886e38)


@triton.jit
def _row_split_stats(row_ptr, stride_v, tile_lo, tiles, n, inv_t, max_ptr, sum_ptr, arg_ptr, out,
                     BLOCK_V: tl.constexpr):
    """Max, sum of exp((l - max) * inv_t) and argmax of tiles [tile_lo, tile_lo + tiles) of a row of n scores,
    stored at `out`. Whole tiles load without a mask (so 16-byte aligned rows load in 128-bit vectors), then the one
    partial tile of the row, if it falls in this split, loads with one."""
    m = -float("inf")
    z = 0.0
    arg = tile_lo * BLOCK_V
    for masked in tl.static_range(2):
        if masked == 0:
            first = tile_lo
            last = tl.minimum(tile_lo + tiles, n // BLOCK_V)
        else:
            first = tl.maximum(tile_lo, n // BLOCK_V)
            last = tl.minimum(tile_lo + tiles, tl.cdiv(n, BLOCK_V))
        for tile in range(first, last):
            offs = tile * BLOCK_V + tl.arange(0, BLOCK_V)
            if masked == 0:
                x = _finite_logits(tl.load(row_ptr + offs * stride_v))
            else:
                x = _finite_logits(tl.load(row_ptr + offs * stride_v, mask=offs < n, other=-float("inf")))
            tile_max = tl.max(x, axis=0)
            arg = tl.where(tile_max > m, tile * BLOCK_V + tl.argmax(x, axis=0), arg)
            m_new = tl.maximum(m, tile_max)
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            z = z * tl.exp((m - m_safe) * inv_t) + tl.sum(tl.exp((x - m_safe) * inv_t), axis=0)
            m = m_new
    tl.store(max_ptr + out, m)
    tl.store(sum_ptr + out, z)
    tl.store(arg_ptr + out, arg.to(tl.int32))


@triton.jit(do_not_specialize=["B", "K", "V", "Vd", "tiles", "S1", "temperature"])
def _row_stats_kernel(
    target_ptr, t_sb, t_st, t_sv,  # [B, K+1, V] logits
    draft_ptr, d_sb, d_st, d_sv,  # [B, K, Vd] logits (the target when there are none; never read then)
    num_draft_ptr,  # [B] int, read when RAGGED
    temp_ptr,  # [B] float32, read when ROW_TEMP
    max_ptr, sum_ptr, arg_ptr,  # [B*(K+1) + B*K, S1] float32, float32, int32: the split statistics
    B, K, V, Vd, tiles, S1, temperature,
    BLOCK_V: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # target rows b*(K+1)+t, then draft rows B*(K+1) + b*K+t
    split = tl.program_id(1).to(tl.int64)
    is_draft = row >= B * (K + 1)
    b = tl.where(is_draft, (row - B * (K + 1)) // tl.maximum(K, 1), row // (K + 1))
    t = tl.where(is_draft, (row - B * (K + 1)) % tl.maximum(K, 1), row % (K + 1))
    k_b = _num_drafts(num_draft_ptr, b, K, RAGGED)
    temp, inv_t = _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP)
    tile_lo = split * tiles
    out = row * S1 + split
    if is_draft:
        if (t < k_b) & (temp != 0.0):
            _row_split_stats(draft_ptr + b * d_sb + t * d_st, d_sv, tile_lo, tiles, Vd, inv_t,
                             max_ptr, sum_ptr, arg_ptr, out, BLOCK_V)
    else:
        if t <= k_b:
            _row_split_stats(target_ptr + b * t_sb + t * t_st, t_sv, tile_lo, tiles, V, inv_t,
                             max_ptr, sum_ptr, arg_ptr, out, BLOCK_V)


@triton.jit
def _combine_stats(max_ptr, sum_ptr, arg_ptr, rows, row_mask, S1, inv_t, BLOCK_S: tl.constexpr):
    """Row max (0 when -inf), sum of exponentials (1 when 0) and argmax from the split statistics of `rows`."""
    s = tl.arange(0, BLOCK_S)
    mask = row_mask[:, None] & (s < S1)[None, :]
    offs = rows[:, None] * S1 + s[None, :]
    m_s = tl.load(max_ptr + offs, mask=mask, other=-float("inf"))
    m = tl.max(m_s, axis=1)
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    z = tl.sum(tl.load(sum_ptr + offs, mask=mask, other=0.0) * tl.exp((m_s - m_safe[:, None]) * inv_t), axis=1)
    arg_s = tl.load(arg_ptr + offs, mask=mask, other=0)
    arg = tl.min(tl.where(mask & (m_s == m[:, None]), arg_s, 2147483647), axis=1)
    return m_safe, tl.where(z > 0.0, z, 1.0), arg.to(tl.int64)


@triton.jit
def _philox_uniform(seed, c0, c1, c2, c3, OPEN: tl.constexpr):
    """Uniform float32 keyed by (seed, c0..c3): in [0, 1), or in (0, 1) when OPEN; multiples of 2**-24."""
    c0 = c0.to(tl.uint32)
    zero = c0 * 0
    r, _, _, _ = philox(seed, c0, (zero + c1).to(tl.uint32), (zero + c2).to(tl.uint32), (zero + c3).to(tl.uint32))
    u = (r >> 8).to(tl.float32)
    if OPEN:
        u = u + 0.5
    return u * 5.9604644775390625e-08


@triton.jit
def _load_probs(row_ptr, offs, stride_v, mask, m, z, inv_t, FROM_PROBS: tl.constexpr):
    """p (or q) at `offs` of one row: exp((l - m) * inv_t) / z from logits, or the probabilities clamped to [0, 1]
    (NaN -> 0)."""
    if FROM_PROBS:
        x = tl.load(row_ptr + offs * stride_v, mask=mask, other=0.0).to(tl.float32)
        return tl.minimum(tl.where(x > 0.0, x, 0.0), 1.0)
    else:
        x = _finite_logits(tl.load(row_ptr + offs * stride_v, mask=mask, other=-float("inf")))
        return tl.exp((x - m) * inv_t) / z


@triton.jit
def _pack(key, idx):
    """(key >= 0, idx) -> int64 that orders by key, then by lower idx."""
    bits = key.to(tl.int32, bitcast=True).to(tl.int64)
    return (bits << 32) | (2147483647 - idx.to(tl.int64))


@triton.jit
def _write_row(out_ptr, o_sb, o_st, tokens_ptr, x_sb, x_st, nacc_ptr, b, K, n, next_token, BLOCK_K: tl.constexpr):
    """tokens[b] = accepted drafts, the next token, then -1; num_accepted[b] = n."""
    for t0 in range(0, K + 1, BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K)
        x = tl.load(tokens_ptr + b * x_sb + t * x_st, mask=t < n, other=0).to(tl.int64)
        val = tl.where(t < n, x, tl.where(t == n, next_token, -1))
        tl.store(out_ptr + b * o_sb + t * o_st, val, mask=t <= K)
    tl.store(nacc_ptr + b, n)


@triton.jit(do_not_specialize=["B", "K", "V", "Vd", "tiles", "S1", "S2", "temperature", "seed"])
def _verify_kernel(
    target_ptr, t_sb, t_st, t_sv,  # [B, K+1, V] logits, or probabilities when FROM_PROBS
    draft_ptr, d_sb, d_st, d_sv,  # [B, K, Vd] like the target, read when HAS_DRAFT
    tokens_ptr, x_sb, x_st,  # [B, K] int32/int64 drafted tokens
    num_draft_ptr,  # [B] int, read when RAGGED
    temp_ptr,  # [B] float32, read when ROW_TEMP
    seed_ptr,  # [B] int64, read when ROW_SEED
    uniform_ptr, u_sb, u_st,  # [B, K] float32 acceptance uniforms, read when GIVEN_RANDOM
    noise_ptr, e_sb, e_sv,  # [B, V] float32 exponential noise, read when GIVEN_RANDOM
    max_ptr, sum_ptr, arg_ptr,  # [B*(K+1) + B*K, S1] split statistics from launch 1, read unless FROM_PROBS
    ws_ptr,  # [>= B, 6] int64 workspace (best keys of r, p, uniform; r's mass; p has mass; counter), zero between
    out_ptr, o_sb, o_st,  # [B, K+1] int64 tokens
    nacc_ptr,  # [B] int64 number accepted
    B, K, V, Vd, tiles, S1, S2, temperature, seed,
    EPS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
    FROM_PROBS: tl.constexpr, HAS_DRAFT: tl.constexpr, RAGGED: tl.constexpr, ROW_TEMP: tl.constexpr,
    ROW_SEED: tl.constexpr, GIVEN_RANDOM: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    k_b = _num_drafts(num_draft_ptr, b, K, RAGGED)
    temp, inv_t = _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP)
    greedy = temp == 0.0
    if ROW_SEED:
        seed_b = tl.load(seed_ptr + b)
        row_key = b * 0
    else:
        seed_b = seed
        row_key = b
    t_row = target_ptr + b * t_sb
    d_row = draft_ptr + b * d_sb

    # 1. Acceptance: n = the first rejected position (K_b if none), and the statistics of row n.
    n = k_b
    m_p = 0.0
    z_p = 1.0
    arg_p = b * 0
    m_q = 0.0
    z_q = 1.0
    x_n = b * 0 - 1
    for t0 in range(0, K + 1, BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K)
        decide = t < k_b
        x = tl.load(tokens_ptr + b * x_sb + t * x_st, mask=decide, other=-1).to(tl.int64)
        x_ok = (x >= 0) & (x < V)
        gather = decide & x_ok
        sampled = (t * 0.0 + temp) != 0.0  # (a vector: the interpreter needs one)
        gather_q = gather & (x < Vd) & sampled
        if FROM_PROBS:
            m_t = tl.zeros([BLOCK_K], tl.float32)
            z_t = m_t + 1.0
            arg_t = tl.zeros([BLOCK_K], tl.int64)
            mq_t = m_t
            zq_t = z_t
        else:
            target_rows = b * (K + 1) + t
            m_t, z_t, arg_t = _combine_stats(max_ptr, sum_ptr, arg_ptr, target_rows, t <= k_b, S1, inv_t, BLOCK_S)
            draft_rows = B * (K + 1) + b * K + t
            mq_t, zq_t, _ = _combine_stats(max_ptr, sum_ptr, arg_ptr, draft_rows, decide & sampled, S1, inv_t, BLOCK_S)
        p_x = _load_probs(t_row + t * t_st, x, t_sv, gather, m_t, z_t, inv_t, FROM_PROBS)
        if HAS_DRAFT:
            q_x = _load_probs(d_row + t * d_st, x, d_sv, gather_q, mq_t, zq_t, inv_t, FROM_PROBS)
            q_x = tl.where(gather_q, q_x, 0.0)
        else:
            q_x = tl.where(gather, 1.0, 0.0)
        if GIVEN_RANDOM:
            u = tl.load(uniform_ptr + b * u_sb + t * u_st, mask=decide, other=0.0)
        else:
            u = _philox_uniform(seed_b, t * 0, t, row_key, 0, False)
        accepted = tl.where(greedy, x == arg_t, u * q_x < p_x) & gather
        first = tl.min(tl.where(decide & ~accepted, t, K + 1), axis=0)
        n = tl.minimum(n, first)
        here = t == n
        if tl.sum(here.to(tl.int32), axis=0) > 0:
            m_p = tl.sum(tl.where(here, m_t, 0.0), axis=0)
            z_p = tl.sum(tl.where(here, z_t, 0.0), axis=0)
            arg_p = tl.sum(tl.where(here, arg_t, 0), axis=0)
            m_q = tl.sum(tl.where(here, mq_t, 0.0), axis=0)
            z_q = tl.sum(tl.where(here, zq_t, 0.0), axis=0)
            x_n = tl.sum(tl.where(here, x, 0), axis=0)

    if greedy:
        if split == 0:
            _write_row(out_ptr, o_sb, o_st, tokens_ptr, x_sb, x_st, nacc_ptr, b, K, n, arg_p, BLOCK_K)
    else:
        # 2. The exponential race over this program's split of row n: residual r = max(0, p - q), and p itself.
        # (One masked loop: this reads one row pair per sequence, launch 1 reads 2K+1 rows.)
        lo = (split * tiles * BLOCK_V).to(tl.int32)  # ids within a row fit 32 bits: fewer registers per element
        hi = tl.minimum(lo + tiles * BLOCK_V, V)
        x_n32 = x_n.to(tl.int32)
        best_r = -1.0
        arg_r = lo
        best_p = -1.0
        arg_pr = lo
        best_u = -1.0
        arg_u = lo
        mass = 0.0
        mass_p = 0.0
        for start in range(lo, hi, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            mask = offs < hi
            p = _load_probs(t_row + n * t_st, offs, t_sv, mask, m_p, z_p, inv_t, FROM_PROBS)
            if HAS_DRAFT:
                q_mask = mask & (offs < Vd) & ((offs * 0 + n) < k_b)  # (a vector: the interpreter needs one)
                q = tl.where(q_mask, _load_probs(d_row + n * d_st, offs, d_sv, q_mask, m_q, z_q, inv_t, FROM_PROBS),
                             0.0)
            else:
                q = tl.where((offs == x_n32) & ((offs * 0 + n) < k_b), 1.0, 0.0)
            r = tl.maximum(p - q, 0.0)
            if GIVEN_RANDOM:
                e = tl.load(noise_ptr + b * e_sb + offs * e_sv, mask=mask, other=1.0)
            else:
                e = -tl.log(_philox_uniform(seed_b, offs, n, row_key, 1, True))
            key_r = tl.where(mask, r / e, -1.0)
            key_p = tl.where(mask, p / e, -1.0)
            key_u = tl.where(mask, 1.0 / e, -1.0)
            tile_r = tl.max(key_r, axis=0)
            arg_r = tl.where(tile_r > best_r, start + tl.argmax(key_r, axis=0), arg_r)
            best_r = tl.maximum(best_r, tile_r)
            tile_p = tl.max(key_p, axis=0)
            arg_pr = tl.where(tile_p > best_p, start + tl.argmax(key_p, axis=0), arg_pr)
            best_p = tl.maximum(best_p, tile_p)
            tile_u = tl.max(key_u, axis=0)
            arg_u = tl.where(tile_u > best_u, start + tl.argmax(key_u, axis=0), arg_u)
            best_u = tl.maximum(best_u, tile_u)
            mass += tl.sum(tl.where(mask, r, 0.0), axis=0)
            mass_p += tl.sum(tl.where(mask, p, 0.0), axis=0)

        # 3. Fold into the row's workspace; the last program of the row reads it back, resets it and writes.
        # The residual mass is summed in 2**-40 fixed point: exact and independent of the order the programs finish in.
        ws = ws_ptr + b * 6
        tl.atomic_max(ws, _pack(tl.maximum(best_r, 0.0), arg_r))
        tl.atomic_max(ws + 1, _pack(tl.maximum(best_p, 0.0), arg_pr))
        tl.atomic_max(ws + 2, _pack(tl.maximum(best_u, 0.0), arg_u))
        mass = tl.where(mass == mass, tl.minimum(mass, 4.0), 0.0)
        tl.atomic_add(ws + 3, (mass * 1099511627776.0).to(tl.int64))
        tl.atomic_max(ws + 4, (mass_p > 0.0).to(tl.int64))
        done = tl.atomic_add(ws + 5, 1)
        if done == S2 - 1:
            packed_r = tl.atomic_xchg(ws, 0)
            packed_p = tl.atomic_xchg(ws + 1, 0)
            packed_u = tl.atomic_xchg(ws + 2, 0)
            total = tl.atomic_xchg(ws + 3, 0)
            p_has_mass = tl.atomic_xchg(ws + 4, 0)
            tl.atomic_xchg(ws + 5, 0)
            # The residual; p when the residual has no mass; uniform when p has none either.
            packed = tl.where(total > EPS * 1099511627776.0, packed_r, tl.where(p_has_mass > 0, packed_p, packed_u))
            next_token = 2147483647 - (packed & 2147483647)
            next_token = tl.minimum(tl.maximum(next_token, 0), V - 1)
            _write_row(out_ptr, o_sb, o_st, tokens_ptr, x_sb, x_st, nacc_ptr, b, K, n, next_token, BLOCK_K)


def _seed_arg(seed: int) -> int:
    """Every int seed as a distinct value in [2**62, 2**63), so that Triton always types it int64."""
    return (seed % (1 << 62)) + (1 << 62)


_WORKSPACES: dict[tuple, torch.Tensor] = {}


def _workspace(device: torch.device, batch: int) -> torch.Tensor:
    """Zeroed per-(device, stream) workspace that every launch leaves zeroed; grown when B outgrows it."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device.type, device.index, stream)
    ws = _WORKSPACES.get(key)
    if ws is None or ws.shape[0] < batch:
        ws = torch.zeros(max(batch, 64), 6, dtype=torch.int64, device=device)
        _WORKSPACES[key] = ws
    return ws


def _launch_config(device: torch.device, rows: int, vocab: int, block_v: int | None, num_splits: int | None,
                   max_splits: int, gpu_block_v: int) -> tuple[int, int, int, int]:
    """(BLOCK_V, splits, tiles per split, num_warps): enough programs to fill the device."""
    if block_v is None:
        block_v = gpu_block_v if device.type == "cuda" else 8192
    tiles = triton.cdiv(vocab, block_v)
    if num_splits is None:
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        num_splits = triton.cdiv(programs, rows)
    num_splits = max(1, min(num_splits, tiles, max_splits))
    tiles_per_split = triton.cdiv(tiles, num_splits)
    return block_v, triton.cdiv(tiles, tiles_per_split), tiles_per_split, 8 if block_v >= 2048 else 4


def row_stats(target, draft, num_draft_tokens, temperature, block_v=None, num_splits=None):
    """Launch 1: split statistics (max, sum of exponentials, argmax) of every target and draft row a decision needs.

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

    Returns
    -------
    tuple
        (max [R, S1] float32, sum [R, S1] float32, argmax [R, S1] int32, S1) with R = B*(K+1) + B*K.
    """
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    vd = draft.shape[2] if draft is not None else 0
    rows = batch * k_plus_1 + batch * k
    block_v, s1, tiles, num_warps = _launch_config(target.device, rows, vocab, block_v, num_splits, BLOCK_S,
                                                  GPU_BLOCK_V_STATS)
    stats_max = torch.empty(rows, s1, dtype=torch.float32, device=target.device)
    stats_sum = torch.empty(rows, s1, dtype=torch.float32, device=target.device)
    stats_arg = torch.empty(rows, s1, dtype=torch.int32, device=target.device)
    d = draft if draft is not None else target
    row_temp = isinstance(temperature, torch.Tensor)
    grid = (batch * k_plus_1 + (batch * k if draft is not None else 0), s1)
    _row_stats_kernel[grid](
        target, *target.stride(),
        d, *d.stride(),
        num_draft_tokens if num_draft_tokens is not None else target,
        temperature if row_temp else target,
        stats_max, stats_sum, stats_arg,
        batch, k, vocab, vd, tiles, s1, 0.0 if row_temp else float(temperature),
        BLOCK_V=block_v, RAGGED=num_draft_tokens is not None, ROW_TEMP=row_temp, num_warps=num_warps,
    )
    return stats_max, stats_sum, stats_arg, s1


def verify_rows(target, draft_tokens, draft, num_draft_tokens, temperature, seed, stats=None, uniforms=None,
                noise=None, block_v=None, num_splits=None):
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
    block_v, s2, tiles, num_warps = _launch_config(device, batch, vocab, block_v, num_splits, 1 << 16, GPU_BLOCK_V_RACE)
    tokens = torch.empty(batch, k_plus_1, dtype=torch.int64, device=device)
    num_accepted = torch.empty(batch, dtype=torch.int64, device=device)
    ws = _workspace(device, batch)
    d = draft if draft is not None else target
    given = uniforms is not None
    if given and (uniforms.shape != (batch, k) or noise is None or noise.shape != (batch, vocab)):
        raise ValueError(f"uniforms must be [B, K] = {(batch, k)} and noise [B, V] = {(batch, vocab)}")
    u = uniforms if given else target
    e = noise if given else target
    stats_max, stats_sum, stats_arg, s1 = stats if stats is not None else (target, target, target, 1)
    row_temp = isinstance(temperature, torch.Tensor)
    row_seed = isinstance(seed, torch.Tensor)
    _verify_kernel[(batch, s2)](
        target, *target.stride(),
        d, *d.stride(),
        draft_tokens, *draft_tokens.stride(),
        num_draft_tokens if num_draft_tokens is not None else target,
        temperature if row_temp else target,
        seed if row_seed else target,
        u, u.stride(0), u.stride(1),
        e, e.stride(0), e.stride(1),
        stats_max, stats_sum, stats_arg,
        ws,
        tokens, *tokens.stride(),
        num_accepted,
        batch, k, vocab, d.shape[2], tiles, s1, s2, 0.0 if row_temp else float(temperature),
        0 if row_seed else _seed_arg(seed),
        EPS=RESIDUAL_EPS, BLOCK_V=block_v, BLOCK_K=BLOCK_K, BLOCK_S=BLOCK_S, FROM_PROBS=stats is None,
        HAS_DRAFT=draft is not None, RAGGED=num_draft_tokens is not None, ROW_TEMP=row_temp, ROW_SEED=row_seed,
        GIVEN_RANDOM=given, num_warps=num_warps,
    )
    return tokens, num_accepted
