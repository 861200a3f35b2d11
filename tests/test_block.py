"""Block verification (``method="block"``) and the emitted tokens' log-probabilities, on the torch backend (the oracle;
the kernel is compared with it token for token in test_kernel_block.py).

Exactness: toy models whose distributions depend on the whole prefix (a table indexed by the prefix), generation by
repeated verify calls, and the joint of the first 3 emitted tokens against the enumerated target joint (chi-square at
ALPHA, fixed seeds). Optimality: the mean accepted count per call against the block rule's exact expectation
(every draft block enumerated) and against token verification's.
"""

import itertools
import math

import pytest
import torch
from util import chi2_pvalue

import specsampler
from specsampler import _testing
from specsampler.torch_backend import emitted_logprobs

ALPHA = 1e-4
V, K = 4, 3
DIGITS = V + 1  # a prefix is a number in base V + 1 (token t is digit t + 1), so every prefix has its own row
TABLE_ROWS = DIGITS ** (K + 3)


def _tables(seed: int, spread: float = 1.5):
    """Target and draft logits for every prefix of up to K + 2 tokens: [TABLE_ROWS, V] each."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(TABLE_ROWS, V, generator=g) * spread
    draft = target + torch.randn(TABLE_ROWS, V, generator=g) * spread
    return target, draft


def _warped(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    if top_k is None:
        return logits
    cut = logits.topk(top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < cut, float("-inf"))


def _emit_three(tables, rows: int, seed: int, *, method: str, one_hot=False, ragged=False, top_k=None,
                backend="torch", device="cpu", need=3):
    """Generate until every row has `need` tokens, one verify call per round: [rows, 3] tokens (-1 past `need`) and
    the accepted counts of the first call."""
    target_t, draft_t = tables
    g = torch.Generator().manual_seed(seed)
    out = torch.full((rows, 3 + K + 1), -1, dtype=torch.int64)
    length = torch.zeros(rows, dtype=torch.int64)
    first_counts = None
    for call in range(4):
        active = torch.nonzero(length < need)[:, 0]
        if active.numel() == 0:
            break
        code = _codes(out[active], length[active])
        drafts, codes = [], [code]
        for t in range(K):
            q = _warped(draft_t[codes[-1]], top_k)
            x = q.argmax(-1) if one_hot else torch.multinomial(q.softmax(-1), 1, generator=g)[:, 0]
            drafts.append(x)
            codes.append(codes[-1] + (x + 1) * DIGITS ** (length[active] + t))
        drafts = torch.stack(drafts, dim=1)
        target = torch.stack([target_t[c] for c in codes], dim=1)
        draft = None if one_hot else torch.stack([draft_t[c] for c in codes[:K]], dim=1)
        nd = torch.randint(0, K + 1, (active.numel(),), generator=g) if ragged else None
        on = [None if t is None else t.to(device) for t in (target, drafts, draft, nd)]
        res = specsampler.verify(*on[:3], num_draft_tokens=on[3], top_k=top_k, method=method, seed=seed * 100 + call,
                                 backend=backend)
        res = type(res)(*(t.cpu() for t in res))
        if first_counts is None:
            first_counts = res.num_accepted
        for j in range(K + 1):  # append the emitted tokens
            emit = res.num_accepted >= j
            out[active[emit], length[active[emit]] + j] = res.tokens[emit, j]
        length[active] += res.num_accepted + 1
    return out[:, :3], first_counts


def _codes(tokens: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    code = torch.zeros(tokens.shape[0], dtype=torch.int64)
    for i in range(tokens.shape[1]):
        code += torch.where(i < length, (tokens[:, i] + 1) * DIGITS**i, 0)
    return code


def _code(prefix) -> int:
    return sum((t + 1) * DIGITS**i for i, t in enumerate(prefix))


def _target_joint(tables, top_k=None) -> torch.Tensor:
    """[V**3] float64: p(a) p(b | a) p(c | a b)."""
    p = _warped(tables[0], top_k).double().softmax(-1)
    return torch.tensor([p[_code(())][a] * p[_code((a,))][b] * p[_code((a, b))][c]
                         for a, b, c in itertools.product(range(V), repeat=3)], dtype=torch.float64)


def _check_joint(tokens: torch.Tensor, joint: torch.Tensor) -> None:
    assert bool(((tokens >= 0) & (tokens < V)).all())
    cells = tokens[:, 0] * V * V + tokens[:, 1] * V + tokens[:, 2]
    counts = torch.bincount(cells, minlength=V**3)
    p_value = chi2_pvalue(counts, joint.float())
    assert p_value > ALPHA, f"p-value {p_value}: counts {counts.tolist()}"


@pytest.mark.parametrize("case", ["sampled", "one-hot", "ragged", "top-k"])
def test_block_joint_of_three_tokens_is_the_targets(case):
    tables = _tables(seed=1)
    top_k = 3 if case == "top-k" else None
    tokens, _ = _emit_three(tables, 20000, seed=2, method="block", one_hot=case == "one-hot",
                            ragged=case == "ragged", top_k=top_k)
    _check_joint(tokens, _target_joint(tables, top_k))


def test_kernel_block_joint_is_the_targets(device):
    """The Triton kernel with its own Philox numbers, through the same generation by verify calls. On CUDA the joint
    of three tokens over many rows; under the CPU interpreter (about 0.2 s a row and call) 200 rows and the joint of
    the first two tokens (16 cells, about 12 draws each), so that the chi-square approximation holds."""
    tables = _tables(seed=1)
    rows = 100000 if device.type == "cuda" else 200
    tokens, _ = _emit_three(tables, rows, seed=5, method="block", backend="triton", device=device,
                            need=3 if device.type == "cuda" else 2)
    joint = _target_joint(tables)
    if device.type == "cuda":
        _check_joint(tokens, joint)
        return
    pairs = joint.reshape(V * V, V).sum(dim=1)
    counts = torch.bincount(tokens[:, 0] * V + tokens[:, 1], minlength=V * V)
    p_value = chi2_pvalue(counts, pairs.float())
    assert p_value > ALPHA, f"p-value {p_value}: counts {counts.tolist()}"


def test_joint_check_catches_a_wrong_prefix():
    """The check has power: the same tokens against a target that ignores the prefix past the first token fail."""
    tables = _tables(seed=1)
    tokens, _ = _emit_three(tables, 20000, seed=2, method="block")
    p = tables[0].double().softmax(-1)
    wrong = torch.tensor([p[_code(())][a] * p[_code((a,))][b] * p[_code((b,))][c]
                          for a, b, c in itertools.product(range(V), repeat=3)], dtype=torch.float64)
    cells = tokens[:, 0] * V * V + tokens[:, 1] * V + tokens[:, 2]
    assert chi2_pvalue(torch.bincount(cells, minlength=V**3), wrong.float()) < ALPHA


def _exact_expectations(tables, one_hot=False):
    """E[accepted] of one call at the root for block and token verification, every draft block enumerated
    (float64, straight from the paper's Algorithm 2)."""
    p_t = tables[0].double().softmax(-1)
    q_t = tables[1].double().softmax(-1)
    e_block = e_token = 0.0
    for block in itertools.product(range(V), repeat=K):
        prefixes = [_code(block[:i]) for i in range(K + 1)]
        qs = [q_t[c] for c in prefixes[:K]]
        if one_hot:
            if list(block) != [int(q.argmax()) for q in qs]:
                continue
            qs = [torch.nn.functional.one_hot(torch.tensor(x), V).double() for x in block]
        prob = math.prod(float(qs[i][x]) for i, x in enumerate(block))
        w, h = [1.0], [1.0]
        for i, x in enumerate(block):
            w.append(min(1.0, w[-1] * float(p_t[prefixes[i]][x]) / float(qs[i][x])))
        for i in range(1, K):
            r = float((w[i] * p_t[prefixes[i]] - qs[i]).clamp_min(0).sum())
            h.append(r / (r + 1 - w[i]) if r + 1 - w[i] > 0 else 1.0)
        h.append(w[K])
        e_block += prob * sum(i * h[i] * math.prod(1 - h[j] for j in range(i + 1, K + 1)) for i in range(K + 1))
        e_token += prob * sum(math.prod(min(1.0, float(p_t[prefixes[j]][block[j]]) / float(qs[j][block[j]]))
                                        for j in range(i)) for i in range(1, K + 1))
    return e_block, e_token


@pytest.mark.parametrize("one_hot", [False, True], ids=["sampled", "one-hot"])
def test_block_accepts_its_exact_expectation_and_more_than_token(one_hot):
    """Sampled drafts: block accepts more. Point-mass drafts: no rule can accept x_1..x_i with more than
    prod p_j(x_j), which token verification already does: the expectations are equal."""
    tables = _tables(seed=3)
    e_block, e_token = _exact_expectations(tables, one_hot)
    if one_hot:
        assert e_block == pytest.approx(e_token, abs=1e-12)
    else:
        assert e_block > e_token + 0.02, (e_block, e_token)  # the toy pair is one where the rules differ
    means = {}
    for method, expected in (("block", e_block), ("token", e_token)):
        _, counts = _emit_three(tables, 20000, seed=4, method=method, one_hot=one_hot)
        mean, se = counts.double().mean(), counts.double().std() / math.sqrt(counts.numel())
        assert abs(float(mean) - expected) < 5 * float(se), (method, float(mean), expected)
        means[method] = (float(mean), float(se))
    (mb, sb), (mt, st) = means["block"], means["token"]
    if not one_hot:
        assert mb - mt > 3 * math.hypot(sb, st), means


def _hooked(batch, k, vocab, seed, **options):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, k + 1, vocab, generator=g) * 2
    draft = target[:, :k] + torch.randn(batch, k, vocab, generator=g)
    drafts = torch.multinomial(draft.reshape(-1, vocab).softmax(-1), 1, generator=g).reshape(batch, k)
    hooks = dict(_uniforms=torch.rand(batch, k, generator=g),
                 _noise=torch.empty(batch, vocab).exponential_(generator=g))
    return dict(target_logits=target, draft_tokens=drafts, draft_logits=draft, backend="torch", **hooks, **options)


@pytest.mark.parametrize("one_hot", [False, True])
def test_one_draft_block_is_token_verification(one_hot):
    case = _hooked(64, 1, 50, seed=5)
    if one_hot:
        case["draft_logits"] = None
    token = _testing.verify_with_hooks(**case, method="token")
    block = _testing.verify_with_hooks(**case, method="block")
    assert torch.equal(token.tokens, block.tokens) and torch.equal(token.num_accepted, block.num_accepted)


def test_greedy_rows_are_the_argmax_prefix_under_block():
    temperature = torch.tensor([0.0, 1.0, 0.0, 0.7, 0.0, 1.3, 0.0])
    case = _hooked(7, 4, 33, seed=6, temperature=temperature, num_draft_tokens=torch.tensor([4, 4, 0, 2, 3, 4, 1]))
    greedy = temperature == 0
    case["draft_tokens"][greedy] = case["target_logits"][greedy, :4].argmax(-1)
    case["draft_tokens"][4, 1] = (case["draft_tokens"][4, 1] + 1) % 33  # row 4 rejects its second draft
    token = _testing.verify_with_hooks(**case, method="token")
    block = _testing.verify_with_hooks(**case, method="block")
    assert torch.equal(token.tokens[greedy], block.tokens[greedy])
    assert block.num_accepted[greedy].tolist() == [4, 0, 1, 1]


def test_equal_models_accept_every_draft():
    case = _hooked(16, 4, 40, seed=7)
    case["draft_logits"] = case["target_logits"][:, :4].clone()
    res = _testing.verify_with_hooks(**case, method="block")
    assert res.num_accepted.tolist() == [4] * 16
    assert torch.equal(res.tokens[:, :4], case["draft_tokens"])


@pytest.mark.parametrize("method", ["token", "block"])
def test_structure_ragged_and_out_of_range_drafts(method):
    case = _hooked(9, 5, 1031, seed=8, num_draft_tokens=torch.tensor([0, 1, 2, 3, 4, 5, 5, 5, 2]))
    case["draft_tokens"][6, 2] = -1  # a placeholder inside the row's drafts: ratio 0
    case["draft_tokens"][7, 0] = 5000
    res = _testing.verify_with_hooks(**case, method=method, return_logprobs=True)
    nd = case["num_draft_tokens"]
    assert bool((res.num_accepted <= nd).all())
    assert res.num_accepted[6] <= 2 and res.num_accepted[7] == 0
    for b in range(9):
        n = int(res.num_accepted[b])
        assert res.tokens[b, :n].tolist() == case["draft_tokens"][b, :n].tolist()
        assert 0 <= int(res.tokens[b, n]) < 1031
        assert res.tokens[b, n + 1:].tolist() == [-1] * (5 - n)
        assert bool(res.logprobs[b, : n + 1].isfinite().all()) and res.logprobs[b, n + 1:].tolist() == [0.0] * (5 - n)


def test_per_row_seeds_do_not_depend_on_the_row_order():
    case = _hooked(6, 3, 64, seed=9)
    del case["_uniforms"], case["_noise"]
    seeds = torch.arange(100, 106)
    a = specsampler.verify(**case, seed=seeds, method="block")
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    b = specsampler.verify(case["target_logits"][perm], case["draft_tokens"][perm], case["draft_logits"][perm],
                           seed=seeds[perm], method="block", backend="torch")
    assert torch.equal(a.tokens[perm], b.tokens)


def test_logprobs_are_the_targets_at_the_emitted_tokens():
    temperature = torch.tensor([0.7, 0.0, 1.0, 1.5])
    case = _hooked(4, 3, 30, seed=10, temperature=temperature, top_k=torch.tensor([5, 0, 0, 12]))
    for method in ("token", "block"):
        res = _testing.verify_with_hooks(**case, method=method, return_logprobs=True)
        for b in range(4):
            scores = case["target_logits"][b].double()
            if temperature[b] > 0:
                k = int(case["top_k"][b])
                if k:
                    scores = scores.masked_fill(scores < scores.topk(k, dim=-1).values[:, -1:], float("-inf"))
                scores = scores / float(temperature[b])
            logp = scores.log_softmax(-1)
            n = int(res.num_accepted[b])
            want = [float(logp[j, res.tokens[b, j]]) for j in range(n + 1)]
            assert res.logprobs[b, : n + 1].tolist() == pytest.approx(want, abs=1e-5)


def test_logprobs_from_probs_and_of_a_row_without_mass():
    probs = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]]])
    res = specsampler.verify_probs(probs, torch.tensor([[3]]), return_logprobs=True, seed=0, backend="torch")
    assert res.num_accepted.tolist() == [0]  # p(3) = 0 at position 0: rejected
    assert res.logprobs[0, 0].item() == pytest.approx(math.log(probs[0, 0, res.tokens[0, 0]].item()))
    dead = torch.full((2, 1, 7), float("-inf"))
    dead[1] = 0.0
    res = specsampler.verify(dead, torch.empty(2, 0, dtype=torch.int64), return_logprobs=True, seed=0,
                             backend="torch")
    assert res.logprobs[:, 0].tolist() == pytest.approx([-math.log(7)] * 2)


def test_emitted_logprobs_pad_with_zero():
    target = torch.randn(2, 3, 10)
    tokens = torch.tensor([[4, -1, -1], [1, 2, 3]])
    out = emitted_logprobs(target, tokens, torch.tensor([0, 2]), 1.0, None, False)
    assert out[0, 1:].tolist() == [0.0, 0.0] and bool((out[1] < 0).all())


def test_bad_method_and_flag_are_refused_by_name():
    case = _hooked(2, 2, 10, seed=11)
    del case["_uniforms"], case["_noise"]
    with pytest.raises(ValueError, match="method"):
        specsampler.verify(**case, method="tree")
    with pytest.raises(TypeError, match="return_logprobs"):
        specsampler.verify(**case, return_logprobs="yes")
    with pytest.raises(ValueError, match="method"):
        specsampler.verify_probs(case["target_logits"].softmax(-1), case["draft_tokens"], method="Block")


def test_empty_batch_with_logprobs():
    res = specsampler.verify(torch.randn(0, 3, 9), torch.empty(0, 2, dtype=torch.int64), method="block",
                             return_logprobs=True)
    assert [tuple(t.shape) for t in res] == [(0, 3), (0,), (0, 3)]


@pytest.mark.parametrize("case", ["sampled", "one-hot", "warped", "mixed-temperature", "hostile", "small-draft-vocab"])
def test_per_row_and_batched_paths_agree(case):
    """The CPU's per-row path (masses only where they can decide) and the batched path (every mass) give the same
    tokens on the same random numbers."""
    from specsampler import torch_backend
    from specsampler._validation import warp_options as _warp

    batch, k, vocab = 12, 4, 257
    args = _hooked(batch, k, vocab, seed=12, num_draft_tokens=torch.tensor([4, 4, 4, 3, 2, 1, 0, 4, 4, 4, 3, 4]))
    temperature = 1.0
    if case == "one-hot":  # the target's argmax, made likely
        args["draft_logits"] = None
        args["target_logits"] *= 3
        args["draft_tokens"] = args["target_logits"][:, :k].argmax(-1)
    if case == "mixed-temperature":
        temperature = torch.tensor([0.0, 0.5, 1.0, 2.0] * 3)
    if case == "hostile":  # NaN and -inf at drafted ids, an all -inf target row, +inf logits
        drafts = args["draft_tokens"]
        args["draft_logits"][0, 1, drafts[0, 1]] = float("nan")
        args["draft_logits"][1, 0, drafts[1, 0]] = float("-inf")
        args["target_logits"][2, 2] = float("-inf")
        args["target_logits"][3, 0, 7] = float("inf")
    if case == "small-draft-vocab":  # Vd = 200 < V: drafted ids past it have q = 0 (one-hot there)
        args["draft_logits"] = args["draft_logits"][:, :, :200].contiguous()
        args["draft_tokens"][::3, 1] = 250
    warp = _warp(20, 0.9, None, temperature, batch, torch.device("cpu")) if case == "warped" else None
    out = [torch_backend.verify_block(args["target_logits"], args["draft_tokens"], args["draft_logits"],
                                      args["num_draft_tokens"], temperature, 0, uniforms=args["_uniforms"],
                                      noise=args["_noise"], vectorized=vectorized, warp=warp)
           for vectorized in (False, True)]
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert len(set(out[0][1].tolist())) >= 3  # several decisions, not all tau = 0
