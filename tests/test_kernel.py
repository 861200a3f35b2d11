"""The Triton kernel against the torch oracle, token for token, on identical random numbers; its own randomness;
its shape (launches, allocations); its split statistics."""

import inspect
import math
import os
import sys

import pytest
import torch
from specsampler.triton_kernels import launching
from util import STATS_TOL, check_structure, make_case

from specsampler import _testing, torch_backend, triton_kernels
from specsampler._testing import verify_probs_with_hooks, verify_with_hooks
from specsampler._validation import warp_options

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

# (B, K, V, dtype, options): every B in {1, 7, 33}, K in {0, 1, 4, 8}, V in {7, 1000, 8193, 50000} and dtype appears,
# with one-hot drafts, ragged rows, greedy rows, per-row temperature and greedy/sampled mixes; V = 2048 is whole tiles.
CASES = [
    (1, 0, 7, F32, {}),
    (1, 4, 8193, BF16, {}),
    (1, 8, 50000, F16, dict(draft=False)),
    (7, 1, 1000, F16, dict(ragged=True)),
    (7, 8, 7, F32, dict(temperature="row", ragged=True)),
    (7, 4, 50000, BF16, dict(temperature=0.0)),
    (33, 4, 1000, BF16, dict(temperature="mixed", ragged=True)),
    (33, 1, 7, F16, dict(draft=False, temperature="mixed")),
    (33, 0, 1000, F32, dict(temperature="row")),
    (7, 4, 8193, F32, dict(draft=False, ragged=True, temperature=0.6)),
    (7, 8, 1000, F32, dict(draft_vocab=900, temperature=1.3)),
    (7, 4, 2048, F32, dict(draft_vocab=1024, ragged=True)),  # whole tiles only: no partial tile in either row
]


def _ids(case):
    b, k, v, dtype, opts = case
    return f"B{b}-K{k}-V{v}-{str(dtype)[6:]}-" + "-".join(f"{a}={c}" for a, c in opts.items())


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_kernel_matches_torch_oracle(case, device):
    batch, k, vocab, dtype, opts = case
    args = make_case(batch, k, vocab, dtype, seed=batch * 100 + k, device=device, **opts)
    # Small tiles and several splits so that the tile loop, the split combine and the last-program fold all run.
    kernel = verify_with_hooks(**args, backend="triton", _block_v=1024, _num_splits=3)
    oracle = verify_with_hooks(**args, backend="torch")
    check_structure(kernel, args["draft_tokens"], args.get("num_draft_tokens"), vocab)
    assert torch.equal(kernel.tokens.cpu(), oracle.tokens.cpu())
    assert torch.equal(kernel.num_accepted.cpu(), oracle.num_accepted.cpu())
    # The oracle's two paths agree with each other too.
    batched = torch_backend.verify_token(
        args["target_logits"], args["draft_tokens"], args["draft_logits"], args.get("num_draft_tokens"),
        args["temperature"] if isinstance(args["temperature"], torch.Tensor) else float(args["temperature"]), 0,
        uniforms=args["_uniforms"], noise=args["_noise"], vectorized=True)
    assert torch.equal(batched[0].cpu(), oracle.tokens.cpu())


@pytest.mark.parametrize("from_probs", [False, True])
def test_kernel_fallback_draws(from_probs, device):
    """The rare draws of the last program of a row: p when the residual has no mass (q equals p), uniform when p has
    none either; token for token against the oracle, with several splits."""
    args = make_case(6, 3, 1000, seed=11, device=device)
    target, draft = args["target_logits"], args["draft_logits"]
    # Rows 0-2: q_0 equals p_0 but for the drafted id x, where p_0(x) ~ 0 and q_0(x) = 5e-7: x is rejected and the
    # residual has a mass of ~5e-7 <= RESIDUAL_EPS, so the correction comes from p_0.
    x = args["draft_tokens"][:3, 0]
    target[:3, 0, :] = target[:3, 0, :].index_put((torch.arange(3, device=device), x), torch.tensor(-40.0))
    row = target[:3, 0].double()
    draft[:3, 0] = row.float()
    z = torch.logsumexp(row, -1)
    draft[:3, 0] = draft[:3, 0].index_put((torch.arange(3, device=device), x), (z + math.log(5e-7)).float())
    args["_uniforms"][:3, 0] = 0.5
    target[3, 0] = -float("inf")  # row 3: p_0 has no mass: rejected at 0, then a uniform draw
    if from_probs:
        args = dict(target_probs=target.float().softmax(-1), draft_tokens=args["draft_tokens"],
                    draft_probs=draft.float().softmax(-1), _uniforms=args["_uniforms"], _noise=args["_noise"])
        run = verify_probs_with_hooks
    else:
        run = verify_with_hooks
    kernel = run(**args, backend="triton", _block_v=256, _num_splits=3)
    oracle = run(**args, backend="torch")
    check_structure(kernel, args["draft_tokens"], None, 1000)
    assert torch.equal(kernel.tokens.cpu(), oracle.tokens.cpu())
    assert oracle.num_accepted[:4].tolist() == [0, 0, 0, 0]


def test_grid_is_not_degenerate():
    """Across the grid many rows accept some drafts and many reject one: both branches are compared above."""
    accepted, rejected = 0, 0
    for batch, k, vocab, dtype, opts in CASES:
        args = make_case(batch, k, vocab, dtype, seed=batch * 100 + k, **opts)
        n = verify_with_hooks(**args, backend="torch").num_accepted
        nd = args.get("num_draft_tokens", torch.full((batch,), k))
        accepted += int((n > 0).sum())
        rejected += int((n < nd).sum())
    assert accepted >= 40 and rejected >= 40, (accepted, rejected)


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_kernel_default_config_and_probs(dtype, device):
    """Default tiles and splits; and the one-launch path from probabilities against the oracle's."""
    args = make_case(7, 4, 8193, dtype, seed=3, device=device)
    assert torch.equal(verify_with_hooks(**args, backend="triton").tokens.cpu(),
                       verify_with_hooks(**args, backend="torch").tokens.cpu())
    probs = dict(target_probs=args["target_logits"].float().softmax(-1).to(dtype), draft_tokens=args["draft_tokens"],
                 draft_probs=args["draft_logits"].float().softmax(-1).to(dtype), _uniforms=args["_uniforms"],
                 _noise=args["_noise"])
    kernel = verify_probs_with_hooks(**probs, backend="triton", _block_v=1024, _num_splits=2)
    oracle = verify_probs_with_hooks(**probs, backend="torch")
    check_structure(kernel, args["draft_tokens"], None, 8193)
    assert torch.equal(kernel.tokens.cpu(), oracle.tokens.cpu())


def test_kernel_seeds(device):
    """Philox randomness: the same seed gives the same tokens; other seeds differ; per-row seeds follow the row."""
    args = make_case(7, 4, 1000, seed=5, device=device)
    del args["_uniforms"], args["_noise"]
    a = verify_with_hooks(**args, seed=123, backend="triton")
    b = verify_with_hooks(**args, seed=123, backend="triton")
    c = verify_with_hooks(**args, seed=124, backend="triton")
    check_structure(a, args["draft_tokens"], None, 1000)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)
    seeds = torch.arange(7, dtype=torch.int64, device=device) * 7919
    whole = verify_with_hooks(**args, seed=seeds, backend="triton")
    perm = torch.tensor([3, 1, 6, 0, 2, 5, 4])
    shuffled = {key: (v[perm.to(v.device)] if isinstance(v, torch.Tensor) else v) for key, v in args.items()}
    part = verify_with_hooks(**shuffled, seed=seeds[perm.to(device)], backend="triton")
    assert torch.equal(whole.tokens[perm.to(device)], part.tokens)


def _from_triton_interpreter():
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_filename.endswith(os.path.join("triton", "runtime", "interpreter.py")):
            return True
        frame = frame.f_back
    return False


from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


class _Sizes(TorchDispatchMode):
    """The largest tensor (elements) any torch operation returns inside the block."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not _from_triton_interpreter():  # its host copies of the arguments are not the call's allocations
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
        return out


def test_kernel_launches_and_allocations(device):
    """Two launches from logits, one from probabilities; nothing of B*(K+1)*V elements allocated in the call."""
    args = make_case(7, 4, 1000, seed=1, device=device)
    del args["_uniforms"], args["_noise"]
    launching.workspace(torch.device(device), 7)  # the workspace is allocated once per device and stream

    with _Sizes() as sizes, _testing.recorded_launches() as launches:
        verify_with_hooks(**args, seed=0, backend="triton")
    assert [launch["kernel"] for launch in launches] == [triton_kernels._row_stats_kernel,
                                                          triton_kernels._verify_kernel]
    assert sizes.largest < 7 * 5 * 1000 // 4
    with _testing.recorded_launches() as launches:
        verify_probs_with_hooks(args["target_logits"].softmax(-1), args["draft_tokens"],
                                args["draft_logits"].softmax(-1), seed=0, backend="triton")
    assert [launch["kernel"] for launch in launches] == [triton_kernels._verify_kernel]


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_row_stats_against_torch(dtype, device):
    """Launch 1 alone: split maxima and sums of exponentials combine to torch's max and logsumexp (sampled rows), split
    maxima and argmaxes to torch's argmax (greedy rows, target rows only: no draft row is read there)."""
    batch, k, vocab = 3, 2, 8193
    args = make_case(batch, k, vocab, dtype, seed=9, device=device, temperature="row")
    target, draft, temp = args["target_logits"], args["draft_logits"], args["temperature"]
    target[0, 1, 5000] = float("nan")  # NaN reads as -inf
    target[1, 0, -1] = 100.0  # the last lane of the last tile wins
    target[2, 2, 7] = target[2, 2, 4000] = 50.0  # a tie across splits: the lower id
    stats, s1 = triton_kernels.row_stats(target, draft, None, temp, block_v=1024, num_splits=3)
    assert s1 == 3 and stats.shape == (2, batch * (2 * k + 1), 3)
    s_max, s_sum = stats
    scores = torch.cat([target.float().reshape(-1, vocab), draft.float().reshape(-1, vocab)])
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    t_rows = torch.cat([temp.repeat_interleave(k + 1), temp.repeat_interleave(k)]).float()
    m = s_max.max(1).values
    lse = m / t_rows + torch.log((s_sum * torch.exp((s_max - m[:, None]) / t_rows[:, None])).sum(1))
    torch.testing.assert_close(m.cpu(), scores.amax(1).cpu(), rtol=0, atol=0)
    torch.testing.assert_close(lse.cpu(), torch.logsumexp(scores / t_rows[:, None], 1).cpu(), **STATS_TOL[dtype])

    stats, _ = triton_kernels.row_stats(target, draft, None, torch.zeros_like(temp), block_v=1024, num_splits=3)
    rows = batch * (k + 1)
    s_max, s_arg = stats[0, :rows], stats[1, :rows].view(torch.int32)
    m = s_max.max(1).values
    arg = torch.where(s_max == m[:, None], s_arg, 2**31 - 1).min(1).values
    torch.testing.assert_close(m.cpu(), scores[:rows].amax(1).cpu(), rtol=0, atol=0)
    assert torch.equal(arg.cpu().long(), scores[:rows].argmax(1).cpu())
    assert int(arg[k + 1]) == vocab - 1 and int(arg[3 * (k + 1) - 1]) == 7


def test_fast_launch_key():
    """The key of the compiled-launcher cache tells apart whatever Triton specialises on: int classes (1, multiple of
    16, 64-bit, and their mixes; only the width for do_not_specialize ones), 16-byte alignment (a view one element
    in) and dtype of every pointer."""
    kernel = triton_kernels._row_stats_kernel
    unspecialised = list(inspect.signature(kernel.fn).parameters).index("B")  # (in do_not_specialize)

    def int_class(value, at):  # the key's entry for an int passed as the kernel's argument number `at`
        return launching.launch_key(kernel, torch.device("cpu"), (0,) * at + (value,), {}, {})[-1]

    assert [int_class(v, 0) for v in (1, 16, 7, 2**31, 2**31 + 16, -(2**31) - 1, 0, 2**63)] == \
        [3, 6, 0, 7, 7, 1, 6, 8]
    assert [int_class(v, unspecialised) for v in (1, 16, 7, 2**31)] == [0, 0, 0, 1]
    x = torch.zeros(64)
    assert launching.launch_key(kernel, torch.device("cpu"), (x,), {}, {}) == \
        launching.launch_key(kernel, torch.device("cpu"), (x[4:],), {}, {})
    assert launching.launch_key(kernel, torch.device("cpu"), (x,), {}, {}) != \
        launching.launch_key(kernel, torch.device("cpu"), (x[1:],), {}, {})


def _row_stats_keys(tokens_views) -> list:
    """The launch keys launch 1 computes for the same inputs with each of the caller's token buffers (``tokens=``)."""
    args = make_case(2, 3, 300, seed=5)
    with _testing.recorded_launches(run=False) as launches:
        for tokens in tokens_views:
            triton_kernels.row_stats(args["target_logits"], args["draft_logits"], None, 1.0, tokens=tokens)
    return [launch["key"] for launch in launches]


def test_fast_launch_key_covers_the_callers_buffers():
    """Every pointer argument's alignment is in the key: a misaligned caller buffer (``tokens=`` one element in)
    selects another compiled launcher than an aligned one (the key once recorded the inputs' alignment only)."""
    store = torch.empty(2 * 4 + 2, dtype=torch.int64)
    aligned, misaligned = store[:8].view(2, 4), store[1:9].view(2, 4)
    assert aligned.data_ptr() % 16 == 0 and misaligned.data_ptr() % 16 != 0
    again = store[2:10].view(2, 4)
    first, second, third = _row_stats_keys([aligned, misaligned, again])
    assert first != second and first == third


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled launchers exist on CUDA only")
def test_fast_launch_matches_triton_launch(kernel_settings):
    """Launches through the cached compiled launchers give what Triton's own launch path gives, also for arguments
    of another specialisation (a misaligned view, int32 drafts, per-row temperatures) met after the first call."""
    args = make_case(7, 4, 8193, seed=21, device="cuda", temperature="mixed")
    misaligned = torch.empty(7 * 5 * 8193 + 1, device="cuda")[1:].view(7, 5, 8193).copy_(args["target_logits"])
    variants = [args, dict(args, target_logits=misaligned), dict(args, draft_tokens=args["draft_tokens"].int()),
                dict(args, temperature=1.0)]
    fast = [verify_with_hooks(**v, backend="triton") for v in variants * 2]
    assert launching._COMPILED  # the second round went through the cached launchers
    kernel_settings(fast_launch=False)
    slow = [verify_with_hooks(**v, backend="triton") for v in variants]
    for a, b in zip(fast, slow * 2, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.num_accepted, b.num_accepted)


@pytest.mark.parametrize("k", [0, 3, 17])
def test_launch_1_sets_the_tokens_to_minus_one(device, k):
    """Launch 1 starts the output at -1 (launch 2 writes every row after it): no fill launch of its own; with a
    float temperature of 0 too, where its grid has no draft rows; for K + 1 past one store's 16 positions."""
    args = make_case(5, k, 300, seed=k, device=device)
    for temperature in (1.0, 0.0):
        tokens = torch.full((5, k + 1), 7, dtype=torch.int64, device=device)
        triton_kernels.row_stats(args["target_logits"], args["draft_logits"], None, temperature, tokens=tokens)
        assert bool((tokens == -1).all())


def test_outgrown_workspace_is_kept(device):
    """A workspace that a larger batch outgrows stays allocated (a graph captured earlier may point at it), and the
    new one is zero and large enough."""
    dev = torch.device(device)
    first = launching.workspace(dev, 8)
    grown = launching.workspace(dev, first.shape[0] + 1)
    assert grown.shape[0] > first.shape[0] and not bool(grown.any())
    assert any(old is first for old in launching._OUTGROWN)
    assert launching.workspace(dev, 8) is grown


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs exist on CUDA only")
def test_graph_replay_after_the_workspace_grows():
    """A call captured at B = 4 replays correctly after an eager call at a larger B grew the workspace and the
    freed-size memory was reused (before the fix the replay read a freed workspace)."""
    args = make_case(4, 4, 4096, seed=3, device="cuda")
    del args["_uniforms"], args["_noise"]
    seed = torch.arange(4, device="cuda", dtype=torch.int64)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream):
        verify_with_hooks(**args, seed=seed)
        with torch.cuda.graph(graph, stream=stream):
            out = verify_with_hooks(**args, seed=seed)
        big = make_case(300, 4, 4096, seed=4, device="cuda")
        del big["_uniforms"], big["_noise"]
        verify_with_hooks(**big, seed=0)  # grows this stream's workspace
        garbage = [torch.full((n, 3), 7, dtype=torch.int64, device="cuda") for n in (64, 128, 256)]
        graph.replay()
        eager = verify_with_hooks(**args, seed=seed)
    torch.cuda.synchronize()
    assert torch.equal(out.tokens, eager.tokens) and bool((out.tokens[:, 0] >= 0).all())
    del garbage


def test_launch_guard_uses_the_tensors_device(monkeypatch, fresh_kernel_state):
    """The launch logic without a GPU: tensors on cuda:1 while cuda:0 is current launch under a guard that makes
    cuda:1 current, through Triton the first time and the cached compiled launcher after; on the current device no
    guard is entered."""
    current = [0]
    seen, passed = [], []

    class Guard:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            self.saved, current[0] = current[0], self.index

        def __exit__(self, *exc):
            current[0] = self.saved

    class Launcher:
        do_not_specialize = ()

        def __init__(self, path):
            self.path = path

        @staticmethod
        def fn(x_ptr, n):  # the kernel's parameters, as launch_key reads them
            pass

        def __getitem__(self, grid):
            def launch(*args, stream=None, **kwargs):
                seen.append((self.path, current[0], grid))
                passed.append(args)
                return Launcher("compiled")
            return launch

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", Guard)
    monkeypatch.setattr(launching, "_raw_stream", lambda index: 0)  # (no CUDA stream here)
    x = torch.zeros(4)
    kernel = Launcher("triton")
    for index in (1, 1, 0):
        launching.launch(kernel, (3, 2), (x, 7), {}, 4, torch.device("cuda", index))
    assert seen == [("triton", 1, (3, 2)), ("compiled", 1, (3, 2, 1)), ("triton", 0, (3, 2))]
    assert current[0] == 0
    # Triton's path gets the tensor; the compiled launcher its address (no data_ptr() + driver query per pointer)
    assert passed[0][0] is x and passed[1] == (x.data_ptr(), 7) and passed[2][0] is x


def test_compiled_launchers_are_bounded(monkeypatch, fresh_kernel_state):
    """The compiled-launcher cache keeps at most MAX_COMPILED launchers, the least recently used evicted first, and
    reset() empties it."""
    class Launcher:
        do_not_specialize = ()

        @staticmethod
        def fn(n):
            pass

        def __getitem__(self, grid):
            return lambda *args, stream=None, **kwargs: Launcher()

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launching, "_raw_stream", lambda index: 0)  # (no CUDA stream here)
    kernel, cuda = Launcher(), torch.device("cuda", 0)
    bound = launching.MAX_COMPILED
    for flag in range(bound + 2):  # as many specialisations (a constexpr each), and two more
        launching.launch(kernel, (1, 1), (7,), dict(FLAG=flag), 4, cuda)
    launching.launch(kernel, (1, 1), (7,), dict(FLAG=2), 4, cuda)  # a hit: the most recently used now
    launching.launch(kernel, (1, 1), (7,), dict(FLAG=bound + 2), 4, cuda)  # evicts the least recently used (3)
    assert len(launching._COMPILED) == bound
    flags = [key[3] for key in launching._COMPILED]
    assert flags[-2:] == [2, bound + 2] and 3 not in flags and flags[0] == 4
    _testing.reset_kernel_state()
    assert not launching._COMPILED and not launching._WORKSPACES


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_another_device_than_the_current_one():
    args = make_case(7, 4, 8193, seed=31, device="cuda:1", temperature="mixed")
    with torch.cuda.device(1):
        expected = verify_with_hooks(**args, backend="triton")
    with torch.cuda.device(0):
        got = verify_with_hooks(**args, backend="triton")
        again = verify_with_hooks(**args, backend="triton")
    assert got.tokens.device == torch.device("cuda:1")
    assert torch.equal(got.tokens, expected.tokens) and torch.equal(again.tokens, expected.tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation and CUDA graphs exist on CUDA only")
def test_no_host_sync_and_cuda_graph_capture():
    """No device-to-host synchronisation in a call; a captured call replays with a seed tensor advanced in place."""
    args = make_case(8, 4, 32000, seed=2, device="cuda")
    del args["_uniforms"], args["_noise"]
    seed = torch.arange(8, device="cuda", dtype=torch.int64)
    verify_with_hooks(**args, seed=seed)  # compile and allocate the workspace first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        verify_with_hooks(**args, seed=seed)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        verify_with_hooks(**args, seed=seed)  # the side stream's workspace
        with torch.cuda.graph(graph, stream=stream):
            out = verify_with_hooks(**args, seed=seed)
    outputs = []
    for step in range(3):
        seed.copy_(torch.arange(8, device="cuda") + 1000 * step)
        graph.replay()
        outputs.append(out.tokens.clone())
        eager = verify_with_hooks(**args, seed=seed)
        assert torch.equal(out.tokens, eager.tokens)
    assert not torch.equal(outputs[0], outputs[1])


# ------------------------------------------------------------------------------------------------------- warpers
def _tied(batch, rows, vocab, seed):
    """Integer logits: many ties, at every cut."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-6, 3, (batch, rows, vocab), generator=g).float()


# (B, K, V, dtype, case options, warpers): V = 8193 and 50000 exceed the scratch row (2048 candidates), so the search
# passes over the row before it compacts; top_k = 3000 never fits the scratch row (the search walks V to the end).
WARP_CASES = [
    (7, 4, 1000, F32, dict(temperature=0.7), dict(top_k=50, top_p=0.9)),
    (7, 4, 8193, BF16, dict(ragged=True), dict(top_p=0.95)),
    (7, 8, 1000, F32, dict(draft_vocab=900, temperature=1.3), dict(min_p=0.1)),
    (1, 1, 50000, F32, dict(temperature=0.8), dict(top_k=3000, min_p=0.001)),
    (7, 2, 1000, F16, dict(draft=False), dict(top_k=10, top_p=0.8, min_p=0.05)),
    (33, 1, 1000, F32, dict(temperature="mixed", ragged=True), "rows"),
    (7, 4, 1000, F32, dict(temperature=0.9), "tied"),
]


def _warp_kwargs(warp, batch, device):
    if warp == "rows":  # per-row settings, each off on some rows (0 / 1.0 / 0)
        g = torch.Generator().manual_seed(batch)
        top_k = torch.randint(0, 40, (batch,), generator=g)
        top_k[::4] = 0
        top_p = torch.rand(batch, generator=g) * 0.5 + 0.5
        top_p[1::4] = 1.0
        min_p = torch.rand(batch, generator=g) * 0.2
        min_p[2::4] = 0.0
        return dict(top_k=top_k.to(device), top_p=top_p.to(device), min_p=min_p.to(device))
    if warp == "tied":
        return dict(top_k=7, top_p=0.6)
    return warp


@pytest.mark.parametrize("case", WARP_CASES, ids=[_ids(c[:5]) + f"-{c[5]}" for c in WARP_CASES])
def test_kernel_warped_matches_torch_oracle(case, device):
    batch, k, vocab, dtype, opts, warp = case
    args = make_case(batch, k, vocab, dtype, seed=batch * 10 + k, device=device, **opts)
    if warp == "tied":
        args["target_logits"] = _tied(batch, k + 1, vocab, 1).to(dtype).to(device)
        args["draft_logits"] = _tied(batch, k, vocab, 2).to(dtype).to(device)
    args.update(_warp_kwargs(warp, batch, device))
    kernel = verify_with_hooks(**args, backend="triton", _block_v=1024, _num_splits=3)
    oracle = verify_with_hooks(**args, backend="torch")
    check_structure(kernel, args["draft_tokens"], args.get("num_draft_tokens"), vocab)
    assert torch.equal(kernel.tokens.cpu(), oracle.tokens.cpu())
    assert torch.equal(kernel.num_accepted.cpu(), oracle.num_accepted.cpu())


def _cuts(scores, temperature, warp, device):
    """The kernel's cuts and kept masses for [B, 1, V] scores, and the torch backend's kept sets and masses."""
    stats = triton_kernels.row_stats(scores, None, None, temperature)
    batch = scores.shape[0]
    w = warp_options(warp.get("top_k"), warp.get("top_p"), warp.get("min_p"), temperature, batch, scores.device)
    cuts = triton_kernels.warp_cuts(scores, None, None, temperature, w, stats).cpu()
    warped = torch_backend.warp_scores(scores, temperature, w)[:, 0].cpu()
    flat = torch.nan_to_num(scores[:, 0].float().cpu(), nan=float("-inf"), neginf=float("-inf"))
    m = flat.amax(1)
    w_all = torch.exp2((flat - m[:, None]) * (torch_backend.LOG2_E / temperature))
    return cuts, flat, warped > float("-inf"), torch.where(warped > float("-inf"), w_all, 0.0).sum(1)


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("warp", [dict(top_k=5), dict(top_k=2500), dict(top_p=0.5), dict(top_p=0.999), dict(top_p=0.0),
                                  dict(min_p=0.3), dict(min_p=1.0), dict(top_k=9, top_p=0.7, min_p=0.01),
                                  dict(top_k=2500, top_p=0.95, min_p=0.001)],
                         ids=lambda w: "-".join(f"{a}={b}" for a, b in w.items()))
def test_warp_cuts_against_torch(warp, dtype, device):
    """Kept sets equal to the torch backend's (tie rule included) and kept masses within rounding, on rows of random
    logits, of ties (integers), one value everywhere, -0.0 beside 0.0, and a row of -inf and NaN. top_k = 2500 keeps
    more than a scratch row's 1024 candidates: the search copies a bracket there, or none, and walks the row."""
    vocab = 4099
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(vocab, generator=g) * 3, torch.randn(vocab, generator=g) * 0.1,
            torch.randint(-4, 2, (vocab,), generator=g).float(), torch.full((vocab,), 1.5),
            torch.where(torch.arange(vocab) % 2 == 0, 0.0, -0.0), torch.where(torch.arange(vocab) < 3, float("nan"),
                                                                              float("-inf"))]
    scores = torch.stack(rows)[:, None, :].to(dtype).to(device)
    cuts, flat, kept, mass = _cuts(scores, 0.8, warp, device)
    assert torch.equal(flat >= cuts[0][:, None], kept | (flat == float("-inf")) & (cuts[0][:, None] == float("-inf")))
    live = flat.amax(1) > float("-inf")
    torch.testing.assert_close(cuts[1][live], mass[live], rtol=2e-5, atol=0)


def test_kernel_sample_matches_torch(device):
    """sample(): the bonus draw of a zero-draft verification, with warpers and greedy rows, token for token."""
    g = torch.Generator().manual_seed(8)
    logits = (torch.randn(9, 3000, generator=g) * 2).to(device)
    noise = torch.empty(9, 3000).exponential_(generator=g).to(device)
    temperature = torch.tensor([0.7, 0.0, 1.2, 0.7, 0.7, 0.0, 2.0, 0.5, 1.0], device=device)
    for warp in (dict(), dict(top_k=40, top_p=0.9), dict(min_p=0.05, top_p=0.95)):
        got = _testing.sample_with_hooks(logits, temperature=temperature, _noise=noise, backend="triton", **warp)
        want = _testing.sample_with_hooks(logits, temperature=temperature, _noise=noise, backend="torch", **warp)
        assert torch.equal(got.cpu(), want.cpu())
        greedy = (temperature == 0).cpu()
        assert torch.equal(got.cpu()[greedy], logits.cpu().argmax(1)[greedy])


def test_warped_kernel_launches_and_allocations(device):
    """Three launches with warpers; nothing of B*(K+1)*V elements allocated (the scratch rows hold 8 slots per lane of
    a 1024-wide tile: 8192 logits)."""
    args = make_case(3, 4, 20000, seed=1, device=device)
    del args["_uniforms"], args["_noise"]
    launching.workspace(torch.device(device), 3)
    with _Sizes() as sizes, _testing.recorded_launches() as launches:
        verify_with_hooks(**args, seed=0, backend="triton", top_k=50, top_p=0.9)
    assert [launch["kernel"] for launch in launches] == [triton_kernels._row_stats_kernel,
                                                          triton_kernels._warp_cut_kernel,
                                                          triton_kernels._verify_kernel]
    assert sizes.largest == 3 * 9 * 8192 < 3 * 5 * 20000


@pytest.mark.parametrize("warp", [dict(top_k=20), dict(top_p=0.8), dict(min_p=0.05),
                                  dict(top_k=30, top_p=0.9, min_p=0.02), dict(top_k=3000), dict(top_p=0.99)],
                         ids=lambda w: "-".join(f"{a}={b}" for a, b in w.items()))
def test_warp_cuts_from_launch_1_candidates(warp, device):
    """With many rows and few splits launch 1 keeps each lane's 4 largest logits, and the cut search starts there: a
    cut above the largest logit left out is exact without reading the row (the rows are overwritten with NaN after
    launch 1, and the cuts do not change); top-k beyond the candidates (3000 > 1024) and top-p keeping more than they
    hold (0.99) fall back to the row (the NaN rows change them). Kept sets equal the torch backend's either way."""
    g = torch.Generator().manual_seed(0)
    batch, k, vocab, temperature = 2, 1, 20000, 0.7
    target = (torch.randn(batch, k + 1, vocab, generator=g) * 3).to(device)
    draft = target[:, :k] + 0.5 * torch.randn(batch, k, vocab, generator=g).to(device)
    w = warp_options(warp.get("top_k"), warp.get("top_p"), warp.get("min_p"), temperature, batch, target.device)
    stats = triton_kernels.row_stats(target, draft, None, temperature, 256, 1, None, candidates=True)
    assert stats[2] is not None and stats[2].shape == (batch * (2 * k + 1), 4 * 256)
    cuts = triton_kernels.warp_cuts(target, draft, None, temperature, w, stats)
    poisoned = triton_kernels.warp_cuts(torch.full_like(target, float("nan")), torch.full_like(draft, float("nan")),
                                        None,
                                 temperature, w, stats)
    rows = torch.cat([target.reshape(-1, vocab), draft.reshape(-1, vocab)]).cpu()
    kept = torch.cat([torch_backend.warp_scores(target, temperature, w).reshape(-1, vocab),
                      torch_backend.warp_scores(draft, temperature, w).reshape(-1, vocab)]).cpu() > float("-inf")
    assert torch.equal(rows >= cuts[0].cpu()[:, None], kept)
    w_all = torch.exp2((rows - rows.amax(1, keepdim=True)) * (torch_backend.LOG2_E / temperature))
    torch.testing.assert_close(cuts[1].cpu(), torch.where(kept, w_all, 0.0).sum(1), rtol=2e-5, atol=0)
    falls_back = warp.get("top_k") == 3000 or warp.get("top_p") == 0.99
    assert torch.equal(cuts, poisoned) != falls_back


def test_warped_verify_from_candidates_matches_torch(device):
    """The whole warped call with launch 1's candidates in use (256-wide tiles, one split: 1024 candidates a row),
    token for token against the torch backend."""
    args = make_case(7, 4, 8193, BF16, seed=5, device=device, ragged=True, temperature="mixed")
    args.update(top_k=40, top_p=0.9)
    kernel = verify_with_hooks(**args, backend="triton", _block_v=256, _num_splits=1)
    oracle = verify_with_hooks(**args, backend="torch")
    check_structure(kernel, args["draft_tokens"], args.get("num_draft_tokens"), 8193)
    assert torch.equal(kernel.tokens.cpu(), oracle.tokens.cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation and CUDA graphs exist on CUDA only")
def test_warped_call_has_no_host_sync_and_replays_in_a_graph():
    """The three launches with warpers (scalar and per-row settings): no device-to-host synchronisation, and a captured
    call replays like an eager one."""
    args = make_case(8, 4, 32000, seed=3, device="cuda")
    del args["_uniforms"], args["_noise"]
    seed = torch.arange(8, device="cuda", dtype=torch.int64)
    per_row = dict(top_k=torch.full((8,), 40, device="cuda"), top_p=torch.full((8,), 0.9, device="cuda"),
                   min_p=torch.full((8,), 0.02, device="cuda"))
    for warp in (dict(top_k=50, top_p=0.9), per_row):
        verify_with_hooks(**args, seed=seed, **warp)  # compile first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            verify_with_hooks(**args, seed=seed, **warp)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            verify_with_hooks(**args, seed=seed, **warp)
            with torch.cuda.graph(graph, stream=stream):
                out = verify_with_hooks(**args, seed=seed, **warp)
        for step in range(2):
            seed.copy_(torch.arange(8, device="cuda") + 1000 * step)
            graph.replay()
            assert torch.equal(out.tokens, verify_with_hooks(**args, seed=seed, **warp).tokens)


# ------------------------------------------------------------------------------------ programmatic dependent launch
def test_pdl_only_where_it_exists(kernel_settings):
    """PDL (off by default until a GPU run times it) never applies under the interpreter; it can be forced for
    offline compilation."""
    assert launching.PDL == (os.environ.get("SPECSAMPLER_PDL", "0") == "1")
    kernel_settings(pdl=True)
    assert not launching.use_pdl(torch.device("cpu"))
    assert launching.use_pdl(torch.device("cpu"), True) and not launching.use_pdl(torch.device("cuda"), False)


_PDL_GPU = torch.cuda.is_available() and triton_kernels.gdc_wait is not None and \
    torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.skipif(not _PDL_GPU, reason="programmatic dependent launch needs CUDA sm_90+ and a Triton with GDC")
def test_pdl_gives_the_same_tokens_and_replays_in_a_graph(kernel_settings):
    """With PDL, launch 2 reads the drafts and their scores before it waits for launch 1 (or the cut launch): the
    tokens equal those without PDL (injected randoms and Philox, warped, ragged, K + 1 > 8), and a captured call
    replays like an eager one."""
    cases = [make_case(7, 4, 8193, seed=41, device="cuda", temperature="mixed", ragged=True),
             make_case(5, 9, 32000, BF16, seed=42, device="cuda", ragged=True),
             make_case(64, 4, 128256, BF16, seed=43, device="cuda")]
    warps = [{}, dict(top_k=50, top_p=0.9)]
    expected = [[verify_with_hooks(**c, **w, backend="triton") for w in warps] for c in cases]
    philox = [verify_with_hooks(**{k: v for k, v in c.items() if not k.startswith("_")}, seed=5, backend="triton")
              for c in cases]
    kernel_settings(pdl=True)
    for case, want, want_philox in zip(cases, expected, philox, strict=True):
        for warp, res in zip(warps, want, strict=True):
            got = verify_with_hooks(**case, **warp, backend="triton")
            assert torch.equal(got.tokens, res.tokens) and torch.equal(got.num_accepted, res.num_accepted)
        plain = {k: v for k, v in case.items() if not k.startswith("_")}
        assert torch.equal(verify_with_hooks(**plain, seed=5, backend="triton").tokens, want_philox.tokens)
    args = {k: v for k, v in cases[2].items() if not k.startswith("_")}
    seed = torch.arange(64, device="cuda", dtype=torch.int64)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream):
        verify_with_hooks(**args, seed=seed)
        with torch.cuda.graph(graph, stream=stream):
            out = verify_with_hooks(**args, seed=seed)
    for step in range(2):
        seed.copy_(torch.arange(64, device="cuda") + 1000 * step)
        graph.replay()
        with _testing.kernel_settings(pdl=False):
            assert torch.equal(out.tokens, verify_with_hooks(**args, seed=seed).tokens)


@pytest.mark.parametrize("case", range(4), ids=["-inf", "top-k", "one-hot -inf", "one-hot top-k"])
def test_kernel_uniform_zero_never_accepts_a_draft_of_probability_zero(device, case):
    """u = 0 with p(x) = 0 (a -inf logit, a token top-k removes): the kernel rejects the draft (uniforms injected
    through the testing entry), as the torch backend does (test_verify.py)."""
    from test_verify import _zero_probability_cases

    target, drafts, draft, options = _zero_probability_cases()[case]
    res = verify_with_hooks(target.to(device), drafts.to(device), None if draft is None else draft.to(device),
                            backend="triton", _uniforms=torch.zeros(1, 2, device=device),
                            _noise=torch.ones(1, 8, device=device), **options)
    assert int(res.num_accepted[0]) == 0 and int(res.tokens[0, 0]) != 0


def test_launchers_with_no_rows(device):
    """The launchers themselves take B = 0 (no launch): empty statistics, cuts and tokens."""
    from specsampler.torch_backend import Warp

    target, draft = torch.randn(0, 3, 16, device=device), torch.randn(0, 2, 16, device=device)
    stats = triton_kernels.row_stats(target, draft, None, 1.0, candidates=True)
    assert stats[0].shape[1] == 0
    assert triton_kernels.warp_cuts(target, draft, None, 1.0, Warp(3, 1.0, float("-inf")), stats).shape == (2, 0)
    tokens, n = triton_kernels.verify_rows(target, torch.zeros(0, 2, dtype=torch.int64, device=device), draft, None,
                                           1.0, 0, stats[:2])
    assert tokens.shape == (0, 3) and n.shape == (0,)


def test_kernel_a_small_residual_is_drawn_from(device):
    """The kernel draws the correction from a residual of small mass (0.003), as the torch backend does
    (test_verify.py): only a residual of at most RESIDUAL_EPS falls back to p."""
    from test_verify import _small_residual_case

    p, drafts, q, uniforms, noise = (t.to(device) for t in _small_residual_case())
    res = verify_probs_with_hooks(p, drafts, q, backend="triton", _uniforms=uniforms, _noise=noise)
    assert int(res.num_accepted[0]) == 0 and res.tokens[0].tolist() == [2, -1]
