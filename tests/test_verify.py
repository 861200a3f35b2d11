"""verify() on both backends: known cases, edge cases, seeds, argument validation."""

import numpy as np
import pytest
import torch
from util import check_structure, make_case

import specsampler
from specsampler._testing import verify_probs_with_hooks, verify_with_hooks

INF = float("inf")


@pytest.fixture(params=["torch", "triton"])
def backend(request):
    return request.param


def _dev(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _verify(backend, target, drafts, draft=None, **kw):
    """verify() with every tensor (the `_uniforms` / `_noise` hooks included) on the backend's device."""
    d = _dev(backend)
    kw = {key: (v.to(d) if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
    return verify_with_hooks(target.to(d), drafts.to(d), None if draft is None else draft.to(d), backend=backend,
                             **kw)


def test_transformers_case(backend):
    """transformers' own test: vocabulary 10, candidates [1, 4, 5]; 1 and 4 accepted, 5 has p = 0, 8 is drawn."""
    lo = -10.0
    draft = torch.full((1, 3, 10), lo)
    draft[0, 0, 1] = draft[0, 1, 4] = draft[0, 2, 5] = 10.0
    target = torch.full((1, 4, 10), lo)
    target[0, 0, 1] = target[0, 1, 4] = 10.0
    target[0, 2] = -INF
    target[0, 2, 8] = 10.0
    for seed in range(4):
        res = _verify(backend, target, torch.tensor([[1, 4, 5]]), draft, seed=seed)
        assert res.num_accepted.tolist() == [2]
        assert res.tokens.tolist() == [[1, 4, 8, -1]]


def test_p_equals_q_accepts_all(backend):
    target = torch.randn(5, 4, 50)
    drafts = torch.randint(0, 50, (5, 3))
    res = _verify(backend, target, drafts, target[:, :3].clone(), seed=1)
    assert res.num_accepted.tolist() == [3] * 5
    check_structure(res, drafts, None, 50)


def test_disjoint_supports_reject_first(backend):
    """q lives on ids 0..4, p on 5..9: the first draft is rejected and the correction comes from p's support."""
    target = torch.full((6, 3, 10), -INF)
    target[..., 5:] = torch.randn(6, 3, 5)
    draft = torch.full((6, 2, 10), -INF)
    draft[..., :5] = torch.randn(6, 2, 5)
    drafts = torch.randint(0, 5, (6, 2))
    res = _verify(backend, target, drafts, draft, seed=2)
    assert res.num_accepted.tolist() == [0] * 6
    assert bool((res.tokens[:, 0] >= 5).all()) and bool((res.tokens[:, 1:] == -1).all())


def test_k_zero_draws_the_bonus(backend):
    target = torch.full((3, 1, 20), -INF)
    target[:, 0, 7] = 0.0
    res = _verify(backend, target, torch.zeros(3, 0, dtype=torch.int64), torch.zeros(3, 0, 20), seed=0)
    assert res.tokens.tolist() == [[7]] * 3 and res.num_accepted.tolist() == [0] * 3


def test_tiny_temperature_is_argmax(backend):
    args = make_case(4, 3, 100, seed=3)
    target = args["target_logits"]
    drafts = target[:, :3].argmax(-1)
    res = _verify(backend, target, drafts, args["draft_logits"], temperature=1e-6, seed=4)
    # p is one-hot at the argmax: those drafts are accepted whatever q is, and the bonus is the last argmax.
    assert res.num_accepted.tolist() == [3] * 4
    assert res.tokens[:, 3].tolist() == target[:, 3].argmax(-1).tolist()


def _interpreted(backend) -> bool:
    """The kernel under Triton's interpreter: one Python call per program, so its tests run fewer rows."""
    return backend == "triton" and not torch.cuda.is_available()


def test_draft_giving_its_token_no_probability(backend):
    """A drafted id the draft gives q = 0 (a -inf or NaN logit there) is one-hot at x: accepted with probability
    p(x), and a rejection never emits x (it was accepted blindly before); an id with p = 0 is never accepted.
    The interpreted kernel runs 40 rows, token for token against the torch oracle on the same random numbers (whose
    acceptance rate the torch case checks on 400 rows); compiled and torch runs check the rate themselves."""
    rows = 40 if _interpreted(backend) else 400
    target = torch.zeros(rows, 2, 6)
    target[:, 0, 3] = -INF  # p_0 uniform over 5 ids: p(1) = 0.2, p(3) = 0
    draft = torch.zeros(rows, 1, 6)
    draft[: rows // 2, 0, 1] = -INF
    draft[rows // 2 :, 0, 1] = float("nan")
    drafts = torch.ones(rows, 1, dtype=torch.int64)
    res = _verify(backend, target, drafts, draft, seed=5)
    accepted = res.num_accepted.cpu().double()
    first = res.tokens[:, 0].cpu()
    assert bool((first[accepted == 0] != 1).all()) and bool((first != 3).all())
    if _interpreted(backend):
        g = torch.Generator().manual_seed(5)
        uniforms, noise = torch.rand(rows, 1, generator=g), torch.empty(rows, 6).exponential_(generator=g)
        randoms = dict(_uniforms=uniforms, _noise=noise)
        kernel, oracle = (_verify(b, target, drafts, draft, **randoms) for b in ("triton", "torch"))
        assert 0 < int(oracle.num_accepted.sum()) < rows  # both outcomes occur, so both paths are compared
        assert torch.equal(kernel.tokens.cpu(), oracle.tokens.cpu())
    else:
        assert abs(float(accepted.mean()) - 0.2) < 5 * (0.2 * 0.8 / rows) ** 0.5
    res = _verify(backend, target[:4], torch.full((4, 1), 3), torch.zeros(4, 1, 6), seed=5)
    assert res.num_accepted.tolist() == [0, 0, 0, 0]


def test_greedy_rows(backend):
    target = torch.randn(3, 4, 30)
    target[2, 1, 4] = target[2, 1].max() + 1  # ties resolve to the lowest index
    target[2, 1, 9] = target[2, 1, 4]
    best = target.argmax(-1)
    drafts = best[:, :3].clone()
    drafts[1, 0] = (drafts[1, 0] + 1) % 30
    res = _verify(backend, target, drafts, None, temperature=0.0, seed=0)
    assert res.num_accepted.tolist() == [3, 0, 3]
    assert res.tokens[0].tolist() == best[0].tolist()
    assert res.tokens[1].tolist() == [best[1, 0].item(), -1, -1, -1]
    assert res.tokens[2, 1].item() == 4


@pytest.mark.parametrize("method", ["token", "block"])
def test_greedy_rows_wide_vocabulary(backend, method):
    """Greedy rows over a vocabulary of several 256-id chunks and a partial one (the CPU argmax works chunk by chunk):
    the lowest index of the maximum, ties across chunks, the maximum in the last partial chunk, +inf, a row of -inf,
    NaN read as -inf (row 0; rows 1 and 2 hold none)."""
    vocab = 700
    g = torch.Generator().manual_seed(3)
    target = torch.randint(-3, 3, (3, 3, vocab), generator=g).float()
    target[0, 0, 7] = target[0, 2, 300] = float("nan")
    target[1, 0, [300, 600, 610]] = 9.0  # tied maxima in two chunks: 300
    target[1, 1, 650] = 9.0  # in the partial chunk
    target[1, 2, [0, 699]] = 9.0
    target[2, 0] = -INF
    target[2, 0, [410, 411]] = -1.0
    target[2, 1, [520, 260]] = INF
    target[2, 2] = -INF  # no maximum but -inf: id 0
    best = torch.nan_to_num(target, nan=-INF).argmax(-1)
    assert best[1].tolist() == [300, 650, 0] and best[2].tolist() == [410, 260, 0]
    res = _verify(backend, target, best[:, :2].clone(), None, temperature=0.0, seed=0, method=method)
    assert res.num_accepted.tolist() == [2, 2, 2] and res.tokens.cpu().tolist() == best.tolist()
    res = _verify(backend, target, (best[:, :2] + 1) % vocab, None, temperature=0.0, seed=0, method=method)
    assert res.num_accepted.tolist() == [0, 0, 0] and res.tokens[:, 0].cpu().tolist() == best[:, 0].tolist()


def test_seeds(backend):
    args = make_case(6, 4, 300, seed=8)
    del args["_uniforms"], args["_noise"]
    d = _dev(backend)
    args = {k: (v.to(d) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    a = specsampler.verify(**args, seed=10, backend=backend)
    b = specsampler.verify(**args, seed=10, backend=backend)
    c = specsampler.verify(**args, seed=11, backend=backend)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    torch.manual_seed(0)
    e = specsampler.verify(**args, backend=backend)  # seed=None draws from torch's default generator
    torch.manual_seed(0)
    f = specsampler.verify(**args, backend=backend)
    assert torch.equal(e.tokens, f.tokens)


def test_any_integer_is_a_seed_and_distinct_seeds_differ(backend):
    """Seeds are hashed whole: s and s + 2**62 differ, seeds beyond 64 bits and negative ones work, numpy integers
    equal Python ones; a torch.Generator gives per-row seeds (same state, same tokens)."""
    args = make_case(3 if _interpreted(backend) else 8, 4, 1000, seed=9, device=_dev(backend))
    del args["_uniforms"], args["_noise"]
    run = lambda **kw: specsampler.verify(**args, backend=backend, **kw).tokens.cpu()  # noqa: E731
    s = 12345
    tokens = [run(seed=v) for v in (s, s + 2**62, s + 2**64, 2**200 + 3, -s)]
    for i in range(len(tokens)):
        for j in range(i):
            assert not torch.equal(tokens[i], tokens[j]), (i, j)
    assert torch.equal(run(seed=np.int64(s)), tokens[0]) and torch.equal(run(seed=np.uint64(s)), tokens[0])
    g = torch.Generator(device=_dev(backend))
    g.manual_seed(5)
    a = run(generator=g)
    g.manual_seed(5)
    assert torch.equal(run(generator=g), a)
    with pytest.raises(ValueError, match="seed or generator"):
        run(seed=1, generator=g)
    with pytest.raises(TypeError, match="generator"):
        run(generator=5)
    with pytest.raises(TypeError, match="seed"):
        run(seed=True)


TINY_TEMPERATURES = [1e-39, 1e-45, 2.0**-127]


def test_temperatures_too_small_for_float32_are_greedy(backend):
    """T whose reciprocal overflows float32 (below 2**-126) is greedy on both backends, as a float and per row."""
    args = make_case(6, 3, 300, seed=14, device=_dev(backend))
    del args["temperature"]
    greedy = verify_with_hooks(**args, temperature=0.0, backend=backend)
    for tiny in TINY_TEMPERATURES:
        assert torch.equal(verify_with_hooks(**args, temperature=tiny, backend=backend).tokens, greedy.tokens), tiny
    rows = torch.tensor([TINY_TEMPERATURES[0], 1.0, TINY_TEMPERATURES[1], 0.5, 0.0, TINY_TEMPERATURES[2]],
                        device=_dev(backend))
    mixed = verify_with_hooks(**args, temperature=rows, backend=backend)
    zeroed = verify_with_hooks(**args, temperature=torch.where(rows < 2**-126, 0.0, rows), backend=backend)
    assert torch.equal(mixed.tokens, zeroed.tokens)
    for row in (0, 2, 5):
        assert torch.equal(mixed.tokens[row], greedy.tokens[row]), row


def test_scores_that_require_grad(backend):
    """A model's raw output (requires_grad) gives the same tokens as its detached values, and no graph."""
    args = make_case(5, 3, 300, seed=13)
    kw = dict(_uniforms=args["_uniforms"], _noise=args["_noise"])
    a = _verify(backend, args["target_logits"], args["draft_tokens"], args["draft_logits"], **kw)
    target, draft = args["target_logits"].requires_grad_(), args["draft_logits"].requires_grad_()
    b = _verify(backend, target, args["draft_tokens"], draft, **kw)
    assert torch.equal(a.tokens, b.tokens) and not b.tokens.requires_grad


def test_non_contiguous_and_int32(backend):
    args = make_case(5, 3, 64, seed=12, device=_dev(backend))
    target = args["target_logits"].transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not target.is_contiguous()  # built on the backend's device: _verify's .to() is a no-op, strides kept
    kw = dict(_uniforms=args["_uniforms"], _noise=args["_noise"])
    a = _verify(backend, args["target_logits"], args["draft_tokens"], args["draft_logits"], **kw)
    b = _verify(backend, target, args["draft_tokens"].int(), args["draft_logits"], **kw)
    assert torch.equal(a.tokens, b.tokens)


def test_strided_row_tensors(backend):
    """[B] arguments that are views with a stride (a column of a larger tensor) read the right rows."""
    args = make_case(5, 3, 64, seed=13, temperature="mixed", ragged=True, device=_dev(backend))
    kw = dict(_uniforms=args["_uniforms"], _noise=args["_noise"])
    common = (args["target_logits"], args["draft_tokens"], args["draft_logits"])
    wide = lambda v: torch.stack([v, v.flip(0)], dim=1)[:, 0]  # noqa: E731 (same values, stride 2)
    a = _verify(backend, *common, temperature=args["temperature"], num_draft_tokens=args["num_draft_tokens"], **kw)
    b = _verify(backend, *common, temperature=wide(args["temperature"]),
                num_draft_tokens=wide(args["num_draft_tokens"]), **kw)
    assert wide(args["temperature"]).stride() == (2,)
    assert torch.equal(a.tokens, b.tokens)
    seeds = torch.arange(5, dtype=torch.int64, device=_dev(backend)) * 31
    c = _verify(backend, *common, seed=seeds)
    d = _verify(backend, *common, seed=wide(seeds))
    assert torch.equal(c.tokens, d.tokens)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(target_logits=torch.zeros(2, 3)), ValueError, r"target_logits must have shape \[B, K, V\], got \(2, 3\)"),
        (dict(target_logits=torch.zeros(2, 3, 10, dtype=torch.float64)), TypeError, "target_logits .*float64"),
        (dict(draft_tokens=torch.zeros(2, 3)), TypeError, "draft_tokens must be int32 or int64, got torch.float32"),
        (dict(draft_tokens=torch.zeros(3, 2, dtype=torch.int64)), ValueError, r"draft_tokens .*\[2, 2\].*\(3, 2\)"),
        (dict(draft_logits=torch.zeros(2, 3, 10)), ValueError, r"draft_logits .*\[2, 2, \*\].*\(2, 3, 10\)"),
        (dict(draft_logits=torch.zeros(2, 2, 11)), ValueError, r"draft_logits has a larger vocabulary \(11\)"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, r"temperature must be a number in \[0, inf\)"),
        (dict(temperature=float("nan")), ValueError, r"temperature must be a number in \[0, inf\)"),
        (dict(temperature=torch.tensor([1.0, float("inf")])), ValueError, "temperature must be finite"),
        (dict(temperature=torch.tensor([1.0, -1.0])), ValueError, "temperature"),
        (dict(temperature=torch.ones(3)), ValueError, "temperature"),
        (dict(num_draft_tokens=torch.ones(3, dtype=torch.int64)), ValueError, "num_draft_tokens"),
        (dict(num_draft_tokens=torch.tensor([0, 3])), ValueError, "num_draft_tokens"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(draft_tokens=torch.zeros(2, 2, dtype=torch.int64, device="meta")), ValueError, "draft_tokens is on meta"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_validation(change, error, words):
    kw = dict(target_logits=torch.zeros(2, 3, 10), draft_tokens=torch.zeros(2, 2, dtype=torch.int64),
              draft_logits=torch.zeros(2, 2, 10))
    kw.update(change)
    with pytest.raises(error, match=words):
        specsampler.verify(**kw)


HOOK_ERRORS = [  # (argument, what is wrong with it, error, message); B = 2, K = 2, V = 10
    pytest.param("_uniforms", dict(device="meta"), ValueError, "_uniforms is on meta, but the target's scores are on",
                 id="_uniforms-device"),
    pytest.param("_noise", dict(device="meta"), ValueError, "_noise is on meta, but the target's scores are on",
                 id="_noise-device"),
    pytest.param("_uniforms", dict(shape=(2, 3)), ValueError,
                 r"_uniforms must have shape \[B, K\] = \[2, 2\], got \(2, 3\)", id="_uniforms-shape"),
    pytest.param("_noise", dict(shape=(2, 9)), ValueError,
                 r"_noise must have shape \[B, V\] = \[2, 10\], got \(2, 9\)", id="_noise-shape"),
    pytest.param("_noise", dict(shape=(10,)), ValueError, r"_noise must have shape \[B, V\]", id="_noise-dims"),
    pytest.param("_uniforms", dict(dtype=torch.float64), TypeError, "_uniforms must be float32, got torch.float64",
                 id="_uniforms-dtype"),
    pytest.param("_noise", dict(dtype=torch.bfloat16), TypeError, "_noise must be float32, got torch.bfloat16",
                 id="_noise-dtype"),
    pytest.param("_uniforms", None, ValueError, "_uniforms is missing", id="_uniforms-missing"),
    pytest.param("_noise", None, ValueError, "_noise is missing", id="_noise-missing"),
]


@pytest.mark.parametrize("name, wrong, error, words", HOOK_ERRORS)
@pytest.mark.parametrize("probs", [False, True], ids=["verify", "verify_probs"])
def test_test_hooks_are_validated(backend, name, wrong, error, words, probs):
    """A test hook on another device (meta: no GPU needed), of another shape or dtype, or without its partner, is
    refused before any backend runs, naming the argument (the kernel would otherwise read it through raw pointers)."""
    d = _dev(backend)
    shapes = dict(_uniforms=(2, 2), _noise=(2, 10))
    hooks = {key: torch.rand(shape, device=d) for key, shape in shapes.items()}
    if wrong is None:
        del hooks[name]
    else:
        spec = dict(shape=shapes[name], dtype=torch.float32, device=d) | wrong
        hooks[name] = torch.rand(spec["shape"], dtype=spec["dtype"], device=spec["device"])
    target = torch.randn(2, 3, 10, device=d)
    draft = torch.randn(2, 2, 10, device=d)
    drafts = torch.zeros(2, 2, dtype=torch.int64, device=d)
    entry = verify_probs_with_hooks if probs else verify_with_hooks
    if probs:
        target, draft = target.softmax(-1), draft.softmax(-1)
    with pytest.raises(error, match=words):
        entry(target, drafts, draft, backend=backend, seed=0, **hooks)


def test_triton_backend_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton'"):
        specsampler.verify(torch.zeros(1, 2, 5), torch.zeros(1, 1, dtype=torch.int64), backend="triton")


def test_auto_backend_is_torch_on_cpu():
    """backend='auto' on CPU tensors runs the torch backend: no kernel launch, the torch backend's tokens."""
    from specsampler import _testing

    target, drafts = torch.randn(3, 3, 20), torch.zeros(3, 2, dtype=torch.int64)
    with _testing.recorded_launches() as launches:
        auto = specsampler.verify(target, drafts, seed=5)
    assert not launches
    assert torch.equal(auto.tokens, specsampler.verify(target, drafts, seed=5, backend="torch").tokens)


def test_public_functions_have_no_test_hooks():
    """The test hooks live in the internal entries; the public ones take what a user passes, and agree with them."""
    import inspect

    for public in (specsampler.verify, specsampler.verify_probs):
        assert not [name for name in inspect.signature(public).parameters if name.startswith("_")]
    args = make_case(3, 2, 50, seed=2)
    del args["_uniforms"], args["_noise"]
    assert torch.equal(specsampler.verify(**args, seed=4).tokens, verify_with_hooks(**args, seed=4).tokens)


# ------------------------------------------------------------------------------------------------- defects of issue 20
def test_empty_batch_gives_empty_results(backend):
    """B = 0 gives empty results on every entry and backend (the launch configuration divided by the rows)."""
    d = _dev(backend)
    assert specsampler.sample(torch.randn(0, 16, device=d), backend=backend).shape == (0,)
    assert specsampler.sample(torch.randn(0, 16, device=d), temperature=0.0, top_k=3, backend=backend).shape == (0,)
    target, draft = torch.randn(0, 4, 16, device=d), torch.randn(0, 3, 16, device=d)
    drafts = torch.zeros(0, 3, dtype=torch.int64, device=d)
    for res in (specsampler.verify(target, drafts, draft, backend=backend),
                specsampler.verify(target, drafts, None, temperature=torch.ones(0, device=d), backend=backend),
                specsampler.verify(target, drafts, draft, top_p=0.9, num_draft_tokens=[], backend=backend),
                specsampler.verify_probs(target.softmax(-1), drafts, draft.softmax(-1), backend=backend)):
        assert res.tokens.shape == (0, 4) and res.tokens.dtype == torch.int64
        assert res.num_accepted.shape == (0,) and res.num_accepted.dtype == torch.int64


@pytest.mark.parametrize("value, error", [(None, TypeError), ("1", TypeError), (True, TypeError), (-0.5, ValueError),
                                          (float("nan"), ValueError)])
def test_temperature_that_is_not_a_number_is_refused_by_name(backend, value, error):
    """sample(temperature=None) was a TypeError from float(), and temperature='1' was accepted."""
    d = _dev(backend)
    with pytest.raises(error, match="temperature"):
        specsampler.sample(torch.randn(2, 16, device=d), temperature=value, backend=backend)
    with pytest.raises(error, match="temperature"):
        specsampler.verify(torch.randn(2, 3, 16, device=d), torch.zeros(2, 2, dtype=torch.int64, device=d),
                           temperature=value, backend=backend)


@pytest.mark.parametrize("value", [[1.5, 2, 3], [1.0, 2.0, 0.0], torch.tensor([1.0, 2.0, 0.0]), [True, False, True],
                                   "123"])
def test_non_integer_num_draft_tokens_are_refused(backend, value):
    """num_draft_tokens=[1.5, 2, 3] was truncated silently: non-integers (lists, float tensors) are refused by name."""
    d = _dev(backend)
    with pytest.raises(TypeError, match="num_draft_tokens"):
        specsampler.verify(torch.randn(3, 4, 16, device=d), torch.zeros(3, 3, dtype=torch.int64, device=d),
                           num_draft_tokens=value, backend=backend)


def test_numpy_integers_keep_working(backend):
    """numpy integer seeds and draft counts are integers: they give what the same Python ints give."""
    d = _dev(backend)
    target, drafts = torch.randn(3, 4, 16, device=d), torch.zeros(3, 3, dtype=torch.int64, device=d)
    want = specsampler.verify(target, drafts, seed=3, num_draft_tokens=[1, 2, 3], backend=backend)
    got = specsampler.verify(target, drafts, seed=np.int64(3), num_draft_tokens=np.array([1, 2, 3]), backend=backend)
    assert torch.equal(got.tokens, want.tokens)
    assert torch.equal(specsampler.sample(target[:, 0], seed=np.int64(3), backend=backend),
                       specsampler.sample(target[:, 0], seed=3, backend=backend))


def _zero_probability_cases():
    """(target [1, 3, 8], drafts [1, 2], draft [1, 2, 8], options): the target gives the first draft probability 0,
    by a -inf logit or by top-k removing it, while the draft gives it most of its mass."""
    target = torch.linspace(0.0, 3.5, 8).repeat(1, 3, 1)  # id 7 the most likely, id 0 the least
    draft = torch.zeros(1, 2, 8)
    draft[0, :, 0] = 5.0  # the draft proposes id 0
    drafts = torch.zeros(1, 2, dtype=torch.int64)
    minus_inf = target.clone()
    minus_inf[0, 0, 0] = -INF
    return [(minus_inf, drafts, draft, {}), (target, drafts, draft, dict(top_k=3)),
            (minus_inf, drafts, None, {}), (target, drafts, None, dict(top_k=3, top_p=0.9))]


@pytest.mark.parametrize("case", range(4), ids=["-inf", "top-k", "one-hot -inf", "one-hot top-k"])
@pytest.mark.parametrize("path", ["per-row", "batched"])
def test_uniform_zero_never_accepts_a_draft_of_probability_zero(path, case):
    """u = 0 with p(x) = 0: u * q(x) < p(x) is false, so the draft is rejected (written u * q <= p it was accepted,
    and no test saw it). The torch backend's per-row (CPU) and batched paths; the kernel's in test_kernel.py."""
    from specsampler import _validation, torch_backend

    target, drafts, draft, options = _zero_probability_cases()[case]
    uniforms = torch.zeros(1, 2)
    noise = torch.ones(1, 8)
    warp = _validation.warp_options(options.get("top_k"), options.get("top_p"), None, 1.0, 1, target.device)
    tokens, n = torch_backend.verify_token(target, drafts, draft, None, 1.0, 0, uniforms=uniforms, noise=noise,
                                           vectorized=path == "batched", warp=warp)
    assert int(n[0]) == 0 and int(tokens[0, 0]) != 0
    res = verify_with_hooks(target, drafts, draft, backend="torch", _uniforms=uniforms, _noise=noise, **options)
    assert int(res.num_accepted[0]) == 0 and int(res.tokens[0, 0]) != 0


def _small_residual_case():
    """(p [1, 2, 4], drafts [1, 1], q [1, 1, 4], uniforms, noise): the draft x = 0 is rejected (u q(0) > p(0)) and
    the residual max(0, p - q) has mass 0.003 at id 2 alone: well above RESIDUAL_EPS, so the correction is 2 (p's
    most likely ids, 0 and 1, would be drawn from p)."""
    p = torch.tensor([[[0.497, 0.5, 0.003, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    q = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    return p, torch.zeros(1, 1, dtype=torch.int64), q, torch.full((1, 1), 0.999), torch.ones(1, 4)


@pytest.mark.parametrize("path", ["per-row", "batched"])
def test_a_small_residual_is_drawn_from(path):
    """A residual of small mass (0.003) is still the distribution of the correction: only a residual of at most
    RESIDUAL_EPS (rounding noise) falls back to p (written with a threshold of 1e-2, the batched path passed every
    other test)."""
    from specsampler import torch_backend

    p, drafts, q, uniforms, noise = _small_residual_case()
    tokens, n = torch_backend.verify_token(p, drafts, q, None, 1.0, 0, from_probs=True, uniforms=uniforms, noise=noise,
                                           vectorized=path == "batched")
    assert int(n[0]) == 0 and tokens[0].tolist() == [2, -1]
