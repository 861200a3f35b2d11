"""Launch 2, ``_verify_kernel``: acceptance, the first rejection, and the correction or bonus token of every row (the
only launch from probabilities), and its launcher ``verify_rows`` (validate, allocate, launch).

Algorithm (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318). p target, q draft,
x_t the drafted tokens, K_b the drafts row b really has, T_b its temperature (0: greedy). Grid (B, S2), or
(B, S2 * (K+1)) with block verification: every program of row b first reads the drafts x_t and the scores at them
(the call's inputs: with programmatic dependent launch, before it waits for the launch before), then
- token verification (``verify_token``): decides acceptance position by position, n the first rejection, and races
  its split of row n for the next token;
- block verification (BLOCK, ``verify_block``; Sun et al. 2025, arXiv 2403.10444): computes the weights w_t and the
  candidate positions, races its split of position i's residual max(0, w_i p_i - q_i) if i is a candidate;
then folds its race into the row's workspace, and the row's last program (an acq_rel counter) writes the row
(``verify_race``: the exponential race, the workspace, the fallbacks). The values per position, the log-probabilities
(LOGPROBS) and the row writers are in ``verify_positions``.

Randomness is counter-based: Philox keyed by the seed (per batch or per row, ``jit_helpers._philox_key``) XOR the
entry point's stream key (STREAM: verify's 0, the seed itself; sample's 1, so that drafts drawn and verified on one
seed get independent numbers). One Philox call (10 rounds) gives the four uniforms of vocabulary ids 4g .. 4g+3
(counters: group g, position n, row, stream 1); the acceptance uniforms use stream 0. The mapping from ids to numbers
does not depend on the tile width or the splits: the same seed gives the same tokens in every launch configuration,
and a [B] seed makes a row's tokens independent of its place in the batch. The testing entry (``specsampler._testing``)
replaces Philox with given uniforms [B, K] and noise [B, V], which the torch backend accepts too, so both can be
compared token for token.

A draft id outside [0, V) at an active position ends the row's drafts there, exactly as a smaller num_draft_tokens
would (the oracle: ``torch_backend.drafts_in_range``): token verification rejects it and draws the bonus from p_n,
block verification decides with K_b that position.

Bytes, with s the element size of the scores and S1, S2 the split counts: reads the statistics (8 * B*(2K+1) * S1 per
program, from cache), 2K gathered scores, the K drafts, and for each sampled row one residual row pair, (V + Vd) * s
(the whole row pair again, by one program, in the rare fallback); writes the tokens, 8 * B*(K+2), and touches a
workspace of 24 bytes per row with atomics. Block verification: one row pair per candidate row raced (the bonus row
alone, V * s, when tau = K_b is decided from the weights; at most K_b pairs), and 24 * (K+1) bytes of workspace a row.
Log-probabilities: 4 * B*(K+1) more bytes written and one score read per row. Nothing of size B*(K+1)*V is allocated;
there is no host synchronisation, and the workspace is zero again after every launch (and never freed: a captured
graph may point at it), so the call can be captured in a CUDA graph. The tokens start at -1 (launch 1 sets them; from
probabilities a fill does), so a row that were never written could not look valid.

Token verification keeps its own code path: BLOCK and LOGPROBS are constexprs, and without them the launch compiles
to the code it had before (bench/results/compile_offline_block_triton*.txt).

References: vLLM's Triton rejection sampler (vllm/v1/sample/rejection_sampler.py); FlashInfer's
chain_speculative_sampling; Triton's tutorial 04-low-memory-dropout (in-kernel Philox); Salmon et al. 2011 (Philox);
the exponential race (Gumbel-max with exponentials: argmax r(x) / E_x).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launching
from .constants import BLOCK_K, BLOCK_S, RESIDUAL_EPS, STREAM_VERIFY
from .jit_helpers import _num_drafts, _philox_key, _scaled_temperature, gdc_wait
from .verify_block import _at, _block_row
from .verify_positions import _gather_drafts, _logprob, _position_probs, _score_at, _write_logprobs, _write_row
from .verify_race import RACE_RESIDUAL, WS_SLOT, _race
from .verify_token import _accept_prefix, _fold_and_write


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
    BLOCK: tl.constexpr, LOGPROBS: tl.constexpr, STREAM: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    k_b = _num_drafts(num_draft_ptr, b, K, RAGGED)
    temp, scale = _scaled_temperature(temp_ptr, b, temperature, ROW_TEMP)
    greedy = temp == 0.0
    seed_b, row_key = _philox_key(seed_ptr, b, seed, ROW_SEED, STREAM)
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
        # A draft id outside [0, V) ends the row's drafts there, as a smaller num_draft_tokens would.
        k_b = tl.minimum(k_b, tl.min(tl.where((t < k_b) & ((x_first < 0) | (x_first >= V)), t, K + 1), axis=0))
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
        # A draft id outside [0, V) is never accepted, and it ends the row's drafts there, as a smaller
        # num_draft_tokens would: rejected there, the next token is the bonus from p_n (never a residual of q_n).
        k_b = tl.where((n < k_b) & ((x_n < 0) | (x_n >= V)), n, k_b)
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
                logprobs=False, stream=STREAM_VERIFY):
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
    stream : int
        The entry point's random stream (``constants.STREAM_*``; Philox keyed by the seed XOR its key).

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
    race = "block-race" if block and not logprobs else "race"
    block_v, s2, tiles, num_warps = launching.launch_config(race, device.type, device.index, batch, vocab,
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
                      MANY_K=k_plus_1 > block_k, BLOCK=bool(block), LOGPROBS=bool(logprobs), STREAM=int(stream))
    # Block verification: S2 programs for each position of a row (a raced row each, at most; the rest only count).
    parts = s2 * k_plus_1 if block and not greedy_only else s2
    launching.launch(_verify_kernel, (batch, parts), args, constexprs, num_warps, device, launch_pdl=pdl)
    return (tokens, num_accepted, lp) if logprobs else (tokens, num_accepted)
