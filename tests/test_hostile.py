"""No input crashes, hangs or corrupts a batch: hostile values on both backends, a property suite, recompilation."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from util import check_structure, make_case

from specsampler import torch_backend
from specsampler._testing import verify_probs_with_hooks, verify_with_hooks

INF, NAN = float("inf"), float("nan")


def _both(args, **extra):
    """verify() on the kernel (compiled on CUDA, interpreted on the CPU) and on both torch paths, same numbers."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    kernel = verify_with_hooks(**moved, backend="triton", _block_v=512, _num_splits=2, **extra)
    oracle = verify_with_hooks(**args, backend="torch", **extra)
    temperature = args.get("temperature", 1.0)
    batched = torch_backend.verify_token(
        args["target_logits"], args["draft_tokens"], args.get("draft_logits"), args.get("num_draft_tokens"),
        temperature.float() if isinstance(temperature, torch.Tensor) else float(temperature), 0,
        uniforms=args["_uniforms"], noise=args["_noise"], vectorized=True)
    assert torch.equal(kernel.tokens.cpu(), oracle.tokens), (kernel.tokens, oracle.tokens)
    assert torch.equal(kernel.num_accepted.cpu(), oracle.num_accepted)
    assert torch.equal(batched[0], oracle.tokens)
    check_structure(oracle, args["draft_tokens"], args.get("num_draft_tokens"), args["target_logits"].shape[-1])
    return oracle


def _hostile(name, args):
    """Apply one class of hostile values to a case from make_case (B = 6, K = 3, V = 700)."""
    t, d, x = args["target_logits"], args["draft_logits"], args["draft_tokens"]
    if name == "nan":
        t[0, 1, 5], t[1, 0, :] = NAN, NAN  # one NaN; a whole NaN row
        d[2, 0, 3], d[3, 2, :] = NAN, NAN
    elif name == "inf":
        t[0, 0, 7], t[0, 0, 9], t[1, 2, 0] = INF, INF, INF  # +inf ties: lowest id
        t[2, 1, :100], d[3, 0, 50:] = -INF, -INF
    elif name == "all_neg_inf":
        t[0, 0, :], t[1, 3, :], d[2, 1, :] = -INF, -INF, -INF  # target rows with no mass; a draft row with none
    elif name == "huge":
        t[0:3] *= 1e30
        d[3:] *= 1e30
    elif name == "bad_ids":
        x[0, 0], x[1, 1], x[2, 2] = -5, 700, 10**9
    elif name == "masked_tail":
        t[..., 650:], d[..., 650:] = -INF, -INF  # a padded vocabulary
    return args


@pytest.mark.parametrize("name", ["nan", "inf", "all_neg_inf", "huge", "bad_ids", "masked_tail"])
@pytest.mark.parametrize("temperature", [1.0, "mixed"])
def test_hostile_values(name, temperature):
    args = _hostile(name, make_case(6, 3, 700, seed=hash(name) % 1000, temperature=temperature))
    res = _both(args)
    if name == "bad_ids":  # invalid ids at active positions are rejected, never read
        assert res.num_accepted[0] == 0 and res.num_accepted[1] <= 1 and res.num_accepted[2] <= 2
    if name == "masked_tail":
        assert bool((res.tokens < 650).all())
    if name == "all_neg_inf":  # p = 0 everywhere: nothing accepted there (greedy rows take the lowest id, 0)
        assert res.num_accepted[0] == 0


@pytest.mark.parametrize("temperature", [1e-8, 1e4])
def test_extreme_temperatures(temperature):
    _both(make_case(5, 3, 300, seed=2, temperature=temperature))


@pytest.mark.parametrize("vocab", [8193, 65537])
def test_one_past_a_power_of_two_with_masked_tail(vocab):
    args = make_case(2, 2, vocab, seed=vocab, draft_vocab=vocab - 1)
    args["target_logits"][..., vocab - 1 :] = -INF
    res = _both(args)
    assert bool((res.tokens < vocab - 1).all())


def test_smaller_draft_vocabulary():
    """Padded embeddings: the draft's missing ids have q = 0 (152064 against 151936, scaled down)."""
    args = make_case(4, 3, 1216, seed=4, draft_vocab=1088)
    _both(args)


def test_probability_inputs_hostile():
    args = make_case(4, 2, 300, seed=6)
    probs = args["target_logits"].softmax(-1)
    probs[0, 0, 3], probs[1, 1, :] = NAN, 0.0  # a NaN; a row with no mass (uniform draw)
    probs[2, 0, 5] = 7.0  # clamped to 1
    q = args["draft_logits"].softmax(-1)
    q[3, 1, :] = 0.0
    kw = dict(_uniforms=args["_uniforms"], _noise=args["_noise"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = verify_probs_with_hooks(probs, args["draft_tokens"], q, backend="torch", **kw)
    b = verify_probs_with_hooks(probs.to(device), args["draft_tokens"].to(device), q.to(device), backend="triton",
                                 _block_v=128, _num_splits=2, **{k: v.to(device) for k, v in kw.items()})
    assert torch.equal(a.tokens, b.tokens.cpu())
    check_structure(a, args["draft_tokens"], None, 300)


_dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])


@st.composite
def cases(draw):
    batch, k, vocab = draw(st.integers(1, 4)), draw(st.integers(0, 4)), draw(st.integers(2, 300))
    temperature = draw(st.sampled_from([1.0, 0.0, 1e-6, 50.0, "row", "mixed"]))
    args = make_case(batch, k, vocab, draw(_dtypes), seed=draw(st.integers(0, 10**6)), temperature=temperature,
                     draft=draw(st.booleans()), ragged=draw(st.booleans()))
    g = torch.Generator().manual_seed(draw(st.integers(0, 10**6)))
    t = args["target_logits"]
    for value in draw(st.lists(st.sampled_from([NAN, INF, -INF, 1e30, -1e30]), max_size=4)):
        t.view(-1)[torch.randint(0, t.numel(), (1,), generator=g)] = value
    if draw(st.booleans()):
        t[..., torch.rand(vocab, generator=g) < 0.5] = -INF  # a mask
    if k and draw(st.booleans()):
        args["draft_tokens"][0, 0] = draw(st.sampled_from([-1, vocab, 2**31 - 1]))
    return args


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(cases())
def test_property_backends_agree_and_output_is_valid(args):
    """Valid structure, ids in range, and the kernel equal to the oracle on the same random numbers, greedy or not."""
    _both(args)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(cases(), st.integers(0, 3))
def test_property_nan_in_one_row_changes_no_other_row(args, row):
    row = row % args["target_logits"].shape[0]
    clean = _both(args)
    args["target_logits"][row] = NAN
    if args["draft_logits"] is not None:
        args["draft_logits"][row, :, 0] = NAN
    dirty = _both(args)
    others = torch.arange(clean.tokens.shape[0]) != row
    assert torch.equal(clean.tokens[others], dirty.tokens[others])


def test_greedy_rows_agree_with_own_randomness():
    """Without the test hook each backend draws its own numbers; greedy rows must still agree."""
    args = make_case(9, 4, 500, seed=7, temperature="mixed")
    del args["_uniforms"], args["_noise"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = verify_with_hooks(**args, seed=1, backend="torch")
    b = verify_with_hooks(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()},
                           seed=1, backend="triton")
    greedy = args["temperature"] == 0
    assert torch.equal(a.tokens[greedy], b.tokens.cpu()[greedy])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiles on CUDA only (the interpreter compiles nothing)")
def test_no_recompilation_per_shape():
    """One compilation per dtype and mode (and stride alignment class), whatever B, K and V are."""
    from specsampler import triton_kernels

    def compiled():
        return sum(len(cache[0]) for kernel in (triton_kernels._row_stats_kernel, triton_kernels._verify_kernel)
                   for cache in kernel.device_caches.values())

    for batch, k, vocab in [(1, 1, 1024), (3, 4, 4096), (7, 8, 2048)]:  # all row strides multiples of 16
        args = make_case(batch, k, vocab, seed=batch, device="cuda")
        del args["_uniforms"], args["_noise"]
        verify_with_hooks(**args, seed=batch)
        if batch == 1:
            first = compiled()
    assert compiled() == first
