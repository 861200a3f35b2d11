"""The Triton kernel's block verification (``method="block"``) and log-probabilities (``return_logprobs=True``)
against the torch oracle (``specsampler.torch_backend.block``): token for token on identical random numbers (the testing
entry's uniforms and noise), the log-probabilities within a per-dtype tolerance; the kernel's own Philox numbers in
distribution; its workspace left zero; CUDA-graph capture (CUDA only)."""

import math

import pytest
import torch
from specsampler.triton_kernels import launching
from util import check_structure, make_case

import specsampler
from specsampler._testing import verify_probs_with_hooks, verify_with_hooks

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

# Log-probabilities: both backends compute in float32 from the same upcast scores (the kernel in log space from the
# row's max, sum of exponentials and kept mass, the oracle by logsumexp over the row), so only the order of the sums
# differs; the scores' dtype sets their size, not the tolerance's.
LOGPROB_TOL = {
    F32: dict(rtol=1e-5, atol=2e-5),
    BF16: dict(rtol=1e-5, atol=2e-5),
    F16: dict(rtol=1e-5, atol=2e-5),
}

# (block_v, num_splits): several tiles per split, one split per row, many small splits
CONFIGS = [(256, 3), (1024, 1), (128, 8)]


def _edit(args, edit, k, vocab):
    """Variants of make_case's inputs: -inf draft logits at the drafted ids, ids outside [0, V), rows of 0 and of K
    drafts, and drafts the target agrees with on the first positions (weights of 1, so positions certain to pass)."""
    drafts, draft, target = args["draft_tokens"], args["draft_logits"], args["target_logits"]
    batch = drafts.shape[0]
    rows = torch.arange(batch, device=drafts.device)
    if "neg_inf" in edit:  # q_t(x_t) = 0 on every other row at t = 1 (one-hot there)
        draft[rows[::2], 1, drafts[::2, 1]] = float("-inf")
    if "outside" in edit:  # ids the target has no row for: ratio 0
        drafts[1, 0] = -1
        drafts[2, min(1, k - 1)] = vocab
    if "ragged_ends" in edit:
        args["num_draft_tokens"][0] = 0
        args["num_draft_tokens"][1] = k
    if "aligned" in edit:  # q = p on positions 0 and 1: w_1 = w_2 = 1
        draft[:, :2] = target[:, :2, : draft.shape[2]]
    return args


# (B, K, V, dtype, make_case options, edits)
BLOCK_CASES = [
    (7, 4, 700, F32, {}, ()),
    (5, 3, 700, BF16, dict(draft=False), ()),
    (6, 4, 700, F32, {}, ("neg_inf",)),
    (6, 3, 800, F16, dict(draft_vocab=600), ("outside",)),
    (7, 4, 700, F32, dict(ragged=True), ("ragged_ends",)),
    (7, 4, 700, BF16, dict(temperature="mixed", ragged=True), ()),
    (6, 3, 700, F32, dict(temperature="row"), ()),
    (7, 4, 1031, F32, dict(temperature=0.8), ()),  # odd V: a partial tile in every split layout
    (6, 4, 700, F32, dict(temperature=1.2), ("aligned",)),
    (4, 9, 300, F32, dict(ragged=True), ()),  # K + 1 > 8: a block of 16 positions
    (5, 0, 500, F32, {}, ()),  # K = 0: the bonus token only
]


def _ids(case):
    b, k, v, dtype, opts, edits = case
    return f"B{b}-K{k}-V{v}-{str(dtype)[6:]}-" + "-".join([f"{a}={c}" for a, c in opts.items()] + list(edits))


def _case(case, device, seed_offset=0):
    batch, k, vocab, dtype, opts, edits = case
    args = make_case(batch, k, vocab, dtype, seed=batch * 100 + k + seed_offset, device=device, **opts)
    return _edit(args, edits, k, vocab)


def _same(kernel, oracle):
    assert torch.equal(kernel.tokens.cpu(), oracle.tokens.cpu()), (kernel.tokens, oracle.tokens)
    assert torch.equal(kernel.num_accepted.cpu(), oracle.num_accepted.cpu())


# Every case in every launch configuration on CUDA; under the CPU interpreter (about 0.2 s a row and call) each case
# in one configuration, the three taking turns, so that each configuration still meets several cases.
MATRIX = [(case, config) for case in BLOCK_CASES for config in CONFIGS] if torch.cuda.is_available() else \
    [(case, CONFIGS[i % len(CONFIGS)]) for i, case in enumerate(BLOCK_CASES)]


@pytest.mark.parametrize(("case", "config"), MATRIX, ids=[f"{_ids(c)}-bv{g[0]}-s{g[1]}" for c, g in MATRIX])
def test_block_kernel_matches_oracle(case, config, device):
    args = _case(case, device)
    kernel = verify_with_hooks(**args, backend="triton", method="block", _block_v=config[0], _num_splits=config[1])
    oracle = verify_with_hooks(**args, backend="torch", method="block")
    check_structure(kernel, args["draft_tokens"], args.get("num_draft_tokens"), case[2])
    _same(kernel, oracle)


def test_block_cases_are_not_degenerate():
    """Across BLOCK_CASES block verification accepts more than token verification on some rows, stops early on
    others, and reaches every K_b on some (so the candidate passes, the bonus and tau < K_b all run)."""
    more = early = full = 0
    for case in BLOCK_CASES:
        args = _case(case, "cpu")
        block = verify_with_hooks(**args, backend="torch", method="block").num_accepted
        token = verify_with_hooks(**args, backend="torch").num_accepted
        nd = args.get("num_draft_tokens", torch.full(block.shape, case[1]))
        more += int((block > token).sum())
        early += int((block < nd).sum())
        full += int(((block == nd) & (nd > 0)).sum())
    assert more >= 5 and early >= 20 and full >= 5, (more, early, full)


# (B, K, V, dtype, make_case options, warpers)
WARP_CASES = [
    (6, 4, 700, F32, dict(temperature=0.7), dict(top_k=50, top_p=0.9)),
    (6, 3, 700, BF16, dict(ragged=True), dict(top_p=0.8)),
    (6, 3, 700, F32, dict(draft_vocab=600, temperature=1.3), dict(min_p=0.05)),
    (7, 2, 700, F16, dict(draft=False, temperature="mixed"), dict(top_k=10, top_p=0.8, min_p=0.02)),
]


@pytest.mark.parametrize("case", WARP_CASES, ids=[_ids((*c[:5], ())) + f"-{c[5]}" for c in WARP_CASES])
def test_block_kernel_warped_matches_oracle(case, device):
    batch, k, vocab, dtype, opts, warp = case
    args = make_case(batch, k, vocab, dtype, seed=batch * 10 + k, device=device, **opts)
    kernel = verify_with_hooks(**args, **warp, backend="triton", method="block", _block_v=256, _num_splits=3)
    oracle = verify_with_hooks(**args, **warp, backend="torch", method="block")
    check_structure(kernel, args["draft_tokens"], args.get("num_draft_tokens"), vocab)
    _same(kernel, oracle)


def _probs(args, dtype):
    draft = args["draft_logits"]
    return dict(target_probs=args["target_logits"].float().softmax(-1).to(dtype), draft_tokens=args["draft_tokens"],
                draft_probs=None if draft is None else draft.float().softmax(-1).to(dtype),
                num_draft_tokens=args.get("num_draft_tokens"), _uniforms=args["_uniforms"], _noise=args["_noise"])


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("draft", [True, False], ids=["draft", "one-hot"])
def test_block_kernel_from_probs_matches_oracle(dtype, draft, device):
    args = _probs(make_case(7, 4, 1031, seed=17, draft=draft, ragged=True, device=device), dtype)
    kernel = verify_probs_with_hooks(**args, backend="triton", method="block", _block_v=256, _num_splits=3)
    oracle = verify_probs_with_hooks(**args, backend="torch", method="block")
    check_structure(kernel, args["draft_tokens"], args["num_draft_tokens"], 1031)
    _same(kernel, oracle)


@pytest.mark.parametrize("from_probs", [False, True])
def test_block_kernel_fallback_draws(from_probs, device):
    """tau = 0 with a residual of no mass (q_0 equals p_0 but for the drafted id, where p_0 ~ 0 and q_0 = 5e-7: the
    weights after it are ~0, so nothing further can pass): the next token comes from p_0; and a row whose p_0 has no
    mass at all draws uniformly."""
    args = make_case(6, 3, 1000, seed=11, device=device)
    target, draft = args["target_logits"], args["draft_logits"]
    rows = torch.arange(3, device=device)
    x = args["draft_tokens"][:3, 0]
    target[:3, 0] = target[:3, 0].index_put((rows, x), torch.tensor(-40.0, device=device))
    row = target[:3, 0].double()
    draft[:3, 0] = row.float()
    z = torch.logsumexp(row, -1)
    draft[:3, 0] = draft[:3, 0].index_put((rows, x), (z + math.log(5e-7)).float())
    target[3, 0] = -float("inf")
    if from_probs:
        args = _probs(args, F32)
        run = verify_probs_with_hooks
    else:
        run = verify_with_hooks
    kernel = run(**args, backend="triton", method="block", _block_v=256, _num_splits=3)
    oracle = run(**args, backend="torch", method="block")
    _same(kernel, oracle)
    assert oracle.num_accepted[:4].tolist() == [0, 0, 0, 0]


# ------------------------------------------------------------------------------------------------ log-probabilities
LOGPROB_CASES = [
    (7, 4, 700, F32, dict(temperature="mixed", ragged=True), {}),
    (6, 3, 517, BF16, dict(temperature=0.7), dict(top_k=40, top_p=0.9)),
    (6, 3, 700, F16, dict(draft=False, temperature="row"), dict(min_p=0.05)),
    (5, 2, 700, F32, dict(temperature=0.0), {}),  # greedy only: the sums at T = 1 from launch 1
    (4, 9, 300, BF16, dict(ragged=True), {}),  # K + 1 > 8
]


@pytest.mark.parametrize("method", ["token", "block"])
@pytest.mark.parametrize("case", LOGPROB_CASES, ids=[_ids((*c[:5], ())) + f"-{c[5]}" for c in LOGPROB_CASES])
def test_logprobs_match_oracle(case, method, device):
    batch, k, vocab, dtype, opts, warp = case
    args = make_case(batch, k, vocab, dtype, seed=batch * 7 + k, device=device, **opts)
    kernel = verify_with_hooks(**args, **warp, backend="triton", method=method, return_logprobs=True, _block_v=256,
                               _num_splits=3)
    oracle = verify_with_hooks(**args, **warp, backend="torch", method=method, return_logprobs=True)
    assert isinstance(kernel, specsampler.VerifyLogprobsResult)
    _same(kernel, oracle)
    assert kernel.logprobs.dtype == torch.float32 and kernel.logprobs.shape == (batch, k + 1)
    torch.testing.assert_close(kernel.logprobs.cpu(), oracle.logprobs.cpu(), **LOGPROB_TOL[dtype])
    plain = verify_with_hooks(**args, **warp, backend="triton", method=method, _block_v=256, _num_splits=3)
    _same(plain, kernel)  # asking for the log-probabilities changes no token


@pytest.mark.parametrize("method", ["token", "block"])
def test_logprobs_with_launch_1_candidates_and_greedy_rows(method, device):
    """Warped rows with launch 1's candidates (many rows, one split: the third statistics plane holds the sampled rows'
    candidate bound) beside greedy rows (the same plane holds their argmax when log-probabilities are asked for)."""
    args = make_case(4, 2, 8192, seed=37, device=device, temperature="mixed")
    warp = dict(top_k=30, top_p=0.9)
    kernel = verify_with_hooks(**args, **warp, backend="triton", method=method, return_logprobs=True, _block_v=256,
                               _num_splits=1)
    oracle = verify_with_hooks(**args, **warp, backend="torch", method=method, return_logprobs=True)
    _same(kernel, oracle)
    torch.testing.assert_close(kernel.logprobs.cpu(), oracle.logprobs.cpu(), **LOGPROB_TOL[F32])


@pytest.mark.parametrize("method", ["token", "block"])
@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_logprobs_from_probs_match_oracle(dtype, method, device):
    args = _probs(make_case(6, 3, 700, seed=23, ragged=True, device=device), dtype)
    kernel = verify_probs_with_hooks(**args, backend="triton", method=method, return_logprobs=True, _block_v=256,
                                     _num_splits=2)
    oracle = verify_probs_with_hooks(**args, backend="torch", method=method, return_logprobs=True)
    _same(kernel, oracle)
    torch.testing.assert_close(kernel.logprobs.cpu(), oracle.logprobs.cpu(), **LOGPROB_TOL[dtype])


@pytest.mark.parametrize("method", ["token", "block"])
def test_logprobs_of_a_row_without_mass(method, device):
    """A target row of -inf (and NaN) scores: the token drawn there uniformly has log-probability -ln V, finite."""
    args = make_case(4, 2, 500, seed=31, device=device)
    args["target_logits"][0, 0] = -float("inf")
    args["target_logits"][1, 0] = float("nan")
    kernel = verify_with_hooks(**args, backend="triton", method=method, return_logprobs=True, _block_v=256,
                               _num_splits=2)
    oracle = verify_with_hooks(**args, backend="torch", method=method, return_logprobs=True)
    _same(kernel, oracle)
    assert kernel.logprobs[:2, 0].cpu().tolist() == pytest.approx([-math.log(500)] * 2)
    torch.testing.assert_close(kernel.logprobs.cpu(), oracle.logprobs.cpu(), **LOGPROB_TOL[F32])


# ------------------------------------------------------------------------------------------------ own randomness
def test_block_kernel_philox_is_independent_of_the_launch_configuration(device):
    """With its own Philox numbers the block kernel's tokens depend on the seed, not on the tiles or splits."""
    args = make_case(7, 4, 1031, seed=5, device=device, temperature="mixed", ragged=True)
    del args["_uniforms"], args["_noise"]
    runs = [verify_with_hooks(**args, seed=123, backend="triton", method="block", _block_v=bv, _num_splits=s)
            for bv, s in CONFIGS]
    for res in runs[1:]:
        _same(res, runs[0])
    other = verify_with_hooks(**args, seed=124, backend="triton", method="block", _block_v=256, _num_splits=3)
    assert not torch.equal(other.tokens, runs[0].tokens)


def test_block_kernel_follows_p(device):
    """The kernel with its own Philox numbers, block verification: the token at each output position follows p
    (chi-square at significance 1e-4 on the fixed P, Q of test_distribution.py; fixed seed). The interpreter is slow:
    160 rows on the CPU (test_block.py's joint test runs the kernel's block verification over more calls)."""
    from test_distribution import _check_positions, _rows

    n_rows = 100000 if device.type == "cuda" else 160
    target, drafts, draft, _ = _rows(n_rows, 1.0, seed=4)
    res = specsampler.verify(target.to(device), drafts.to(device), draft.to(device), seed=99, backend="triton",
                             method="block")
    _check_positions(res.tokens.cpu(), res.num_accepted.cpu())


def test_block_kernel_one_hot_from_probs_follows_p(device):
    from test_distribution import _check_positions, _rows

    n_rows = 100000 if device.type == "cuda" else 160
    target, drafts, _, _ = _rows(n_rows, 1.0, seed=6, one_hot=True)
    res = specsampler.verify_probs(target.softmax(-1).to(device), drafts.to(device), seed=3, backend="triton",
                                   method="block")
    _check_positions(res.tokens.cpu(), res.num_accepted.cpu())


# ------------------------------------------------------------------------------------------------ workspace, graphs
def test_block_launch_leaves_its_workspace_zero(device):
    """The last program of a row resets every slot its row can have touched (K + 1 per row) and the counter."""
    args = make_case(7, 4, 700, seed=3, device=device, ragged=True)
    verify_with_hooks(**args, backend="triton", method="block", _block_v=128, _num_splits=4)
    ws = launching.workspace(device, 7 * 5)
    assert ws.shape[0] >= 7 * 5 and not bool(ws.any())
    del args["_uniforms"], args["_noise"]
    verify_with_hooks(**args, seed=1, backend="triton", method="block", return_logprobs=True, _block_v=128,
                      _num_splits=4)
    assert not bool(launching.workspace(device, 7 * 5).any())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation and CUDA graphs exist on CUDA only")
@pytest.mark.parametrize("warp", [{}, dict(top_k=50, top_p=0.9)])
def test_block_call_has_no_host_sync_and_replays_in_a_graph(warp):
    args = make_case(8, 4, 32000, seed=2, device="cuda", temperature="mixed")
    del args["_uniforms"], args["_noise"]
    seed = torch.arange(8, device="cuda", dtype=torch.int64)
    options = dict(method="block", return_logprobs=True, **warp)
    verify_with_hooks(**args, seed=seed, **options)  # compile and allocate the workspace first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        verify_with_hooks(**args, seed=seed, **options)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        verify_with_hooks(**args, seed=seed, **options)  # the side stream's workspace
        with torch.cuda.graph(graph, stream=stream):
            out = verify_with_hooks(**args, seed=seed, **options)
    outputs = []
    for step in range(3):
        seed.copy_(torch.arange(8, device="cuda") + 1000 * step)
        graph.replay()
        outputs.append(out.tokens.clone())
        eager = verify_with_hooks(**args, seed=seed, **options)
        assert torch.equal(out.tokens, eager.tokens) and torch.equal(out.logprobs, eager.logprobs)
    assert not torch.equal(outputs[0], outputs[1])


# ------------------------------------------------------------------------------------------------ launches
@pytest.mark.parametrize("options", [dict(method="block"), dict(return_logprobs=True),
                                     dict(method="block", return_logprobs=True)], ids=["block", "logprobs", "both"])
def test_block_and_logprobs_add_no_launch_and_no_large_allocation(options, device):
    """Block verification and the log-probabilities take the token call's launches (2 from logits, 3 with warpers, 1
    from probabilities), with the switches as constexprs (the token launch's are off, its grid (B, S2)); block's grid
    is (B, S2 * (K+1)); nothing of B*(K+1)*V elements is allocated."""
    from test_kernel import _Sizes

    from specsampler import _testing, triton_kernels

    args = make_case(7, 4, 400, seed=1, device=device)
    del args["_uniforms"], args["_noise"]
    launching.workspace(device, 7 * 5)  # allocated once per device and stream
    with _testing.recorded_launches() as token:
        verify_with_hooks(**args, seed=0, backend="triton", _num_splits=2)
    assert token[-1]["constexprs"]["BLOCK"] is False and token[-1]["constexprs"]["LOGPROBS"] is False
    with _Sizes() as sizes, _testing.recorded_launches() as launches:
        verify_with_hooks(**args, seed=0, backend="triton", _num_splits=2, **options)
    assert [launch["kernel"] for launch in launches] == [triton_kernels._row_stats_kernel,
                                                          triton_kernels._verify_kernel]
    assert sizes.largest < 7 * 5 * 400 // 4
    block = options.get("method") == "block"
    assert launches[1]["constexprs"]["BLOCK"] is block
    assert launches[1]["constexprs"]["LOGPROBS"] is bool(options.get("return_logprobs"))
    assert launches[0]["constexprs"]["LOGPROBS"] is bool(options.get("return_logprobs"))
    assert launches[1]["grid"] == (7, token[-1]["grid"][1] * (5 if block else 1))
    with _testing.recorded_launches() as launches:
        verify_with_hooks(**args, seed=0, backend="triton", top_k=20, top_p=0.9, **options)
    assert len(launches) == 3
    with _testing.recorded_launches() as launches:
        verify_probs_with_hooks(args["target_logits"].softmax(-1), args["draft_tokens"],
                                args["draft_logits"].softmax(-1), seed=0, backend="triton", **options)
    assert [launch["kernel"] for launch in launches] == [triton_kernels._verify_kernel]
