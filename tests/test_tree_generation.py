"""Token trees through the KV cache with holes, tree drafting and prompt-lookup tries (generation building blocks).

Tiny Llama, Qwen2 and GPT-2 models from configs, with the sdpa and the eager attention: a tree forward gives, node by
node, the logits of feeding that node's path as a plain sequence (fresh model, no cache); after ``keep_path`` the cache
computes what a cache of the committed tokens alone computes; the draft grows its tree one forward per depth, with its
top tokens or i.i.d. draws whose distributions it returns; n-gram continuations merge into a trie; and a small greedy
tree-speculation loop built from these pieces gives target.generate's tokens.
"""

from __future__ import annotations

import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from util import chi2_pvalue_pooled, perturbed, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
from specsampler.generation.kv_cache import CachedModel, check_tree_attention, tree_ancestors  # noqa: E402
from specsampler.generation.trees import (  # noqa: E402
    accept_tree,
    expand_tree,
    lookup_candidates,
    path_keep,
    tree_inputs,
    tree_size,
)

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
V = 96
# Logits of a tree forward against a plain forward of the same path: only the summation order differs (masked
# slots add exact zeros after the softmax). The tiny models' logits are below 1 in size; measured (2026-12-05, three
# families, sdpa): float32 <= 9e-8, bfloat16 <= 2e-3 (one bfloat16 step at 0.4 is 2e-3).
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
FAMILIES = [(f, a) for f in ("llama", "qwen2", "gpt2") for a in ("sdpa", "eager")]


def _model(family: str, attn: str, dtype=torch.float32, vocab: int = V):
    config = tiny_config(family, vocab)
    config._attn_implementation = attn
    return tiny_model(config, 0).to(dtype)


@pytest.fixture(scope="module", params=FAMILIES, ids=[f"{f}-{a}" for f, a in FAMILIES])
def model(request):
    return _model(*request.param)


def _path(tokens: torch.Tensor, parents: torch.Tensor, j: int) -> list[int]:
    """Row tokens of the fed token j's path (root first), following `parents` over the fed tokens."""
    out = []
    while j >= 0:
        out.append(int(tokens[j]))
        j = int(parents[j])
    return out[::-1]


def _plain(model, seq: list[int]) -> torch.Tensor:
    """The logits after `seq`, from a plain forward of the whole sequence (no cache, no mask)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0, -1].float()


def _random_parents(batch: int, n: int, g: torch.Generator) -> torch.Tensor:
    """[B, N] random topological parents in [-1, i)."""
    return torch.stack([torch.randint(-1, max(i, 0), (batch,), generator=g) if i else torch.full((batch,), -1)
                        for i in range(n)], dim=1)


def _cache_with_holes(model, steps: int, g: torch.Generator) -> tuple[CachedModel, list[list[int]], torch.Tensor]:
    """Three left-padded rows (5, 2, 4 prompt tokens) through `steps` chain steps that accept 2, 0, 1 and 0, 1, 2
    drafts: holes in the cache. Returns the cache, each row's committed tokens, and each row's last token."""
    lengths, accepted = [5, 2, 4], [[2, 0, 1], [0, 1, 2]]
    prompt = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for b, n in enumerate(lengths):
        prompt[b, 5 - n:], mask[b, 5 - n:] = torch.randint(3, V, (n,), generator=g), 1
    lm = CachedModel(model, 3)
    lm.defer(prompt[:, :-1], mask[:, :-1])
    committed = [prompt[b, mask[b].bool()][:-1].tolist() for b in range(3)]
    last = prompt[:, -1]
    for s in range(steps):
        fed = torch.cat([last[:, None], torch.randint(3, V, (3, 3), generator=g)], dim=1)
        with torch.no_grad():
            lm.forward(fed, None)
        n = torch.tensor(accepted[s])
        lm.keep(n, 4, int(n.max()), int(n.min()))
        for b in range(3):
            committed[b] += fed[b, :int(n[b]) + 1].tolist()
        last = torch.randint(3, V, (3,), generator=g)
    return lm, committed, last


# ------------------------------------------------------------------------------------------ forward_tree, keep_path
def test_tree_ancestors():
    parents = torch.tensor([[-1, 0, 0, 1, -1, 4]])
    anc = tree_ancestors(parents)[0]
    assert anc[3].nonzero().flatten().tolist() == [0, 1, 3]
    assert anc[5].nonzero().flatten().tolist() == [4, 5]
    assert anc[2].nonzero().flatten().tolist() == [0, 2]


@pytest.mark.parametrize("steps", [0, 2], ids=["after-prefill", "with-holes"])
def test_tree_forward_equals_plain_paths(model, steps):
    g = torch.Generator().manual_seed(steps)
    lm, committed, last = _cache_with_holes(model, steps, g)
    nodes = 7
    tree_tokens = torch.randint(3, V, (3, nodes), generator=g)
    tokens, parents, _ = tree_inputs(last, tree_tokens, _random_parents(3, nodes, g))
    with torch.no_grad():
        logits = lm.forward_tree(tokens, parents).float()
    assert logits.shape == (3, nodes + 1, V)
    for b in range(3):
        for j in range(nodes + 1):
            ref = _plain(model, committed[b] + _path(tokens[b], parents[b], j))
            torch.testing.assert_close(logits[b, j], ref, atol=ATOL[torch.float32], rtol=0)


def test_tree_forward_bfloat16():
    model = _model("llama", "sdpa", torch.bfloat16)
    g = torch.Generator().manual_seed(5)
    lm, committed, last = _cache_with_holes(model, 2, g)
    tokens, parents, _ = tree_inputs(last, torch.randint(3, V, (3, 6), generator=g), _random_parents(3, 6, g))
    with torch.no_grad():
        logits = lm.forward_tree(tokens, parents).float()
    for b in range(3):
        for j in range(7):
            ref = _plain(model, committed[b] + _path(tokens[b], parents[b], j))
            torch.testing.assert_close(logits[b, j], ref, atol=ATOL[torch.bfloat16], rtol=0)


def test_keep_path_then_plain_forward(model):
    """After a tree and keep_path (paths of depth 2, 0 and 3: ragged holes), the chain API goes on as if the cache
    had only ever seen the committed tokens and the accepted path; then a second tree on top of it."""
    g = torch.Generator().manual_seed(3)
    lm, committed, last = _cache_with_holes(model, 2, g)
    tree_parents = torch.tensor([[-1, -1, 0, 0, 2, 1]] * 3)
    tree_tokens = torch.randint(3, V, (3, 6), generator=g)
    path = torch.tensor([[0, 2, -1], [-1, -1, -1], [0, 2, 4]])
    with torch.no_grad():
        lm.forward_tree(*tree_inputs(last, tree_tokens, tree_parents)[:2])
        lm.keep_path(path_keep(path, 7))
        assert lm.mask.shape[1] == lm.cache.get_seq_length()  # the slots no row keeps (past node 4) are cropped
        for b in range(3):
            committed[b] += [int(last[b])] + [int(tree_tokens[b, i]) for i in path[b].tolist() if i >= 0]
        fed = torch.randint(3, V, (3, 3), generator=g)
        logits = lm.forward(fed, None).float()
        for b in range(3):
            for j in range(3):
                torch.testing.assert_close(logits[b, j], _plain(model, committed[b] + fed[b, :j + 1].tolist()),
                                           atol=ATOL[torch.float32], rtol=0)
        lm.keep(torch.tensor([2, 2, 2]), 3, 2, 2)
        committed = [c + fed[b].tolist() for b, c in enumerate(committed)]
        last = torch.randint(3, V, (3,), generator=g)
        tokens, parents, _ = tree_inputs(last, tree_tokens, tree_parents)
        logits = lm.forward_tree(tokens, parents).float()
    for b in range(3):
        for j in range(7):
            torch.testing.assert_close(logits[b, j], _plain(model, committed[b] + _path(tokens[b], parents[b], j)),
                                       atol=ATOL[torch.float32], rtol=0)


def test_padded_nodes_are_holes():
    """Rows with fewer nodes (num_nodes): the padding nodes are fed as holes, seen by nobody, never kept."""
    model = _model("qwen2", "sdpa")
    g = torch.Generator().manual_seed(4)
    lm, committed, last = _cache_with_holes(model, 1, g)
    tree_tokens = torch.randint(3, V, (3, 4), generator=g)
    tree_parents = torch.tensor([[-1, 0, 1, 2]] * 3)
    num = torch.tensor([4, 1, 2])
    tokens, parents, valid = tree_inputs(last, tree_tokens, tree_parents, num)
    assert valid.tolist() == [[True] * 5, [True, True, False, False, False], [True] * 3 + [False] * 2]
    with torch.no_grad():
        logits = lm.forward_tree(tokens, parents, valid).float()
        for b in range(3):
            for j in range(int(num[b]) + 1):
                torch.testing.assert_close(logits[b, j], _plain(model, committed[b] + _path(tokens[b], parents[b], j)),
                                           atol=ATOL[torch.float32], rtol=0)
        lm.keep_path(torch.ones(3, 5, dtype=torch.bool))  # holes stay holes
        assert lm.mask[:, -5:].tolist() == valid.long().tolist()


def test_select_rows_with_an_open_tree():
    model = _model("gpt2", "eager")
    g = torch.Generator().manual_seed(10)
    lm, committed, last = _cache_with_holes(model, 1, g)
    tree_tokens = torch.randint(3, V, (3, 3), generator=g)
    with torch.no_grad():
        lm.forward_tree(*tree_inputs(last, tree_tokens, torch.tensor([[-1, 0, -1]] * 3))[:2])
        lm.select(torch.tensor([2, 0]))
        lm.keep_path(path_keep(torch.tensor([[0, 1], [2, -1]]), 4))
        fed = torch.randint(3, V, (2, 2), generator=g)
        logits = lm.forward(fed, None).float()
    for i, (b, path) in enumerate(((2, [0, 1]), (0, [2]))):
        seq = committed[b] + [int(last[b])] + [int(tree_tokens[b, j]) for j in path] + fed[i].tolist()
        torch.testing.assert_close(logits[i, -1], _plain(model, seq), atol=ATOL[torch.float32], rtol=0)


def test_open_tree_blocks_the_chain_api():
    model = _model("llama", "sdpa")
    lm = CachedModel(model, 1)
    with torch.no_grad():
        lm.forward_tree(torch.tensor([[5, 6]]), torch.tensor([[-1, 0]]))
        with pytest.raises(RuntimeError, match="open"):
            lm.forward(torch.tensor([[7]]), None)
        with pytest.raises(ValueError, match=r"\[B, S\]"):
            lm.keep_path(torch.ones(1, 3, dtype=torch.bool))
        with pytest.raises(ValueError, match="parent"):
            lm.forward_tree(torch.tensor([[7]]), torch.tensor([[2]]))
        lm.keep_path(torch.tensor([[True, False]]))
    with pytest.raises(RuntimeError, match="no token tree"):
        lm.keep_path(torch.ones(1, 1, dtype=torch.bool))
    assert lm.mask.tolist() == [[1]] and lm.cache.get_seq_length() == 1


class _Drops4DMask(torch.nn.Module):
    """A model that ignores its attention mask (as a model that rebuilds its own causal mask would)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_models_without_4d_masks_are_refused_by_name():
    inner = _model("llama", "sdpa")
    with pytest.raises(NotImplementedError, match="_Drops4DMask.*does not apply a 4D attention mask"):
        check_tree_attention(_Drops4DMask(inner))
    check_tree_attention(inner)
    flash = _model("gpt2", "sdpa")
    flash.config._attn_implementation = "flash_attention_2"  # (the name is what is checked: no kernel runs)
    lm = CachedModel(flash, 1)
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel runs attention with 'flash_attention_2'"):
        lm.forward_tree(torch.tensor([[5]]), torch.tensor([[-1]]))


# ------------------------------------------------------------------------------------------------ path_keep
def test_path_keep():
    path = torch.tensor([[0, 4, 5, 6], [-1, -1, -1, -1], [2, 3, -1, -1]])
    keep = path_keep(path, 8)
    assert keep.tolist() == [[True, True, False, False, False, True, True, True],
                             [True] + [False] * 7,
                             [True, False, False, True, True, False, False, False]]
    # the draft's open slots stop before its unfed leaves: nodes past them are left out
    assert path_keep(path, 6)[0].tolist() == [True, True, False, False, False, True]


def test_tree_size():
    assert tree_size((3, 2, 1, 1)) == (21, 15)


@pytest.mark.parametrize("prune", [{}, dict(min_prob=0.2), dict(budget=6)], ids=["full", "min_prob", "budget"])
def test_proposal_counts_the_nodes_within_each_rows_limit(draft, prune):
    """Row b verifies the nodes of its first limits[b] levels, its first nodes (breadth-first): 0, 3, 9, 21 of a full
    (3, 2, 1, 1) tree at limits 0, 1, 2, 4; of a pruned one, the nodes that deep."""
    from specsampler.generation.tree_drafters import TreeDraftModel

    g = torch.Generator().manual_seed(11)
    vocab = draft.config.vocab_size
    drafter = TreeDraftModel(draft, 4, (3, 2, 1, 1), vocab, None, "top", None, **prune)
    drafter.prefill(torch.randint(0, vocab, (4, 5), generator=g), torch.ones(4, 5, dtype=torch.long))
    with torch.no_grad():
        proposal = drafter.propose(torch.randint(0, vocab, (4,), generator=g), [0, 1, 2, 4])
    if not prune:
        assert proposal.counts == [0, 3, 9, 21]
    depth = torch.zeros_like(proposal.parents)
    for i in range(proposal.parents.shape[1]):  # topological: a parent's depth is known first
        parent = proposal.parents[:, i]
        depth[:, i] = torch.where(parent >= 0, depth.gather(1, parent.clamp(min=0)[:, None])[:, 0] + 1, 1)
    widths = drafter.tree.widths.tolist()
    for b, limit in enumerate([0, 1, 2, 4]):
        n = sum(widths[b])  # the row's real nodes, breadth-first
        assert proposal.counts[b] == int((depth[b, :n] <= limit).sum())
        assert bool((depth[b, : proposal.counts[b]] <= limit).all())


# ---------------------------------------------------------------------------------------------- expand_tree
@pytest.fixture(scope="module")
def draft():
    return _model("llama", "sdpa")


def _counting(model):
    """Count `model`'s forwards (after its 4D-mask probe, which runs once per model)."""
    check_tree_attention(model)
    calls = []
    forward = model.forward
    model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    return calls, lambda: model.__dict__.pop("forward")


def test_expand_tree_top_tokens(draft):
    g = torch.Generator().manual_seed(6)
    lm, committed, last = _cache_with_holes(draft, 1, g)
    calls, restore = _counting(draft)
    try:
        with torch.no_grad():
            tree = expand_tree(lm, last, (3, 2, 1, 1))
    finally:
        restore()
    assert len(calls) == 4  # one forward per depth, the leaves never fed
    n, fed = tree_size((3, 2, 1, 1))
    assert (n, fed) == (21, 15) and tree.scores is None
    assert tree.tokens.shape == tree.parents.shape == (3, 21)
    expected = [-1] * 3 + [0, 0, 1, 1, 2, 2] + list(range(3, 9)) + list(range(9, 15))
    assert tree.parents.tolist() == [expected] * 3
    assert lm.open[0].shape == (3, fed + 1)
    branching = {-1: 3, **{i: c for c, nodes in ((2, range(3)), (1, range(3, 15))) for i in nodes}}
    for b in range(3):
        for node, c in branching.items():
            kids = [int(tree.tokens[b, i]) for i in range(21) if int(tree.parents[b, i]) == node]
            path = _path(torch.cat([last[b:b + 1], tree.tokens[b]]), torch.cat([torch.tensor([-1]),
                                                                                tree.parents[b] + 1]), node + 1)
            ref = _plain(draft, committed[b] + path)
            assert len(set(kids)) == c
            assert kids == ref.topk(c).indices.tolist()


def test_expand_tree_iid_scores_are_the_sampled_distributions(draft):
    g = torch.Generator().manual_seed(7)
    lm, committed, last = _cache_with_holes(draft, 2, g)
    sampling = {"temperature": torch.tensor([0.7, 1.0, 1.3]), "top_k": 5}
    with torch.no_grad():
        tree = expand_tree(lm, last, (2, 2, 1), sampling=sampling, candidates="iid", rng=random.Random(11))
    n, fed = tree_size((2, 2, 1))
    assert tree.scores.shape == (3, n + 1, V) and tree.scores.dtype == torch.float32
    assert bool((tree.scores[:, fed + 1:] == 0).all())  # the leaves: no children, zero rows
    tokens, parents, _ = tree_inputs(last, tree.tokens, tree.parents)
    for b in range(3):
        for j in range(fed + 1):
            ref = _plain(draft, committed[b] + _path(tokens[b], parents[b], j))
            torch.testing.assert_close(tree.scores[b, j], ref, atol=ATOL[torch.float32], rtol=0)
    # the children are draws of specsampler.sample from exactly those rows (same seeds, same order)
    rng = random.Random(11)
    start = 0
    for width, c in ((1, 2), (2, 2), (4, 1)):
        rows = tree.scores[:, start:start + width].repeat_interleave(c, dim=1).reshape(-1, V)
        temps = sampling["temperature"].repeat_interleave(width * c)
        draws = specsampler.sample(rows, seed=rng.getrandbits(62), temperature=temps, top_k=5).view(3, -1)
        level = torch.tensor([start + i for i in range(width)]) - 1  # frontier nodes of this depth (-1: root)
        kids = torch.stack([tree.tokens[b][torch.isin(tree.parents[b], level)] for b in range(3)])
        assert torch.equal(kids, draws)
        assert bool(torch.isin(kids[:, :c], tree.scores[:, start].topk(5).indices).all())
        start += width


def test_expand_tree_vocab_and_processors(draft):
    """A target vocabulary smaller than the draft's cuts the scores; processors see each node's own path."""
    lm = CachedModel(draft, 2)
    seen = []

    def ban_seven(scores, before, first):
        seen.append((first, None if before is None else before.tolist()))
        return scores.index_fill(-1, torch.tensor([7]), float("-inf"))

    last = torch.tensor([5, 9])
    with torch.no_grad():
        tree = expand_tree(lm, last, (2, 2), vocab=90, processors=ban_seven)
    assert bool((tree.tokens < 90).all()) and not bool((tree.tokens == 7).any())
    assert seen[0] == (0, None) and [f for f, _ in seen] == [0, 1, 1]
    assert seen[1][1] == tree.tokens[:, 0:1].tolist() and seen[2][1] == tree.tokens[:, 1:2].tolist()
    with pytest.raises(ValueError, match="branching"):
        expand_tree(lm, last, (2, 0))
    with pytest.raises(ValueError, match="sampling"):
        expand_tree(lm, last, (2,), candidates="iid")


def test_accept_tree_then_next_tree_sees_the_path(draft):
    """accept_tree: paths to a leaf (never fed: deferred, then fed in front of the next forward), to an inner node,
    and none; the next tree's root scores are those of the committed tokens, last, the path and the new last."""
    g = torch.Generator().manual_seed(9)
    lm, committed, last = _cache_with_holes(draft, 2, g)
    with torch.no_grad():
        tree = expand_tree(lm, last, (2, 2, 1))  # nodes 0-1, 2-5, leaves 6-9 (parents 2-5)
        n, fed = tree_size((2, 2, 1))
        path = torch.tensor([[1, 4, 8], [0, -1, -1], [-1, -1, -1]])
        behind = accept_tree(lm, path, tree.tokens, fed)
        assert behind.tolist() == [int(tree.tokens[0, 8]), -1, -1]
        for b in range(3):
            committed[b] += [int(last[b])] + [int(tree.tokens[b, i]) for i in path[b].tolist() if i >= 0]
        new_last = torch.randint(3, V, (3,), generator=g)
        again = expand_tree(lm, new_last, (2,), sampling={}, candidates="iid", rng=random.Random(0))
    for b in range(3):
        ref = _plain(draft, committed[b] + [int(new_last[b])])
        torch.testing.assert_close(again.scores[b, 0], ref, atol=ATOL[torch.float32], rtol=0)
    assert lm.open[0].shape == (3, 1)


# ------------------------------------------------------------------------------------------------ prompt lookup
def test_lookup_candidates_trie():
    seq = [5, 6, 1, 2, 5, 6, 1, 3, 9, 5, 6]  # tail [5, 6]: after it at 4 came [1, 3, 9, 5], at 0 [1, 2, 5, 6]
    tree = lookup_candidates([seq], num_candidates=4, max_ngram=2, num_tokens=4)
    assert tree.tokens.tolist() == [[1, 3, 9, 5, 2, 5, 6]]
    assert tree.parents.tolist() == [[-1, 0, 1, 2, 0, 4, 5]]  # the shared 1 is one node
    assert tree.num_nodes.tolist() == [7]
    short = lookup_candidates([seq], num_candidates=1, max_ngram=2, num_tokens=2)
    assert short.tokens.tolist() == [[1, 3]] and short.parents.tolist() == [[-1, 0]]


def test_lookup_candidates_batch():
    rows = [
        [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3, 4, 1, 2, 3],  # 3-gram matches at 4 and 0, then the 2-gram one at 10
        [4, 5, 6],  # no match
        [7, 8, 7, 8, 7],  # [8, 7] twice (a prefix of the first: no new node), then [8, 7, 8]: one more node
    ]
    tree = lookup_candidates(rows, num_candidates=3, max_ngram=3, num_tokens=3, fill=0)
    assert tree.num_nodes.tolist() == [9, 0, 3]
    assert tree.tokens[0].tolist() == [7, 8, 5, 9, 1, 2, 4, 1, 2]
    assert tree.parents[0].tolist() == [-1, 0, 1, -1, 3, 4, -1, 6, 7]
    assert tree.tokens[1].tolist() == [0] * 9 and tree.parents[1].tolist() == [-1] * 9
    assert tree.tokens[2, :3].tolist() == [8, 7, 8] and tree.parents[2, :3].tolist() == [-1, 0, 1]
    assert lookup_candidates(rows, 2, 3, 3).tokens[0].tolist() == [7, 8, 5, 9, 1, 2]


def test_lookup_trie_verifies_and_keeps_the_path():
    """verify_tree on a trie (greedy target wanting 1, 2, 5, 6, then 4) -> path -> the fed slots to keep."""
    tree = lookup_candidates([[5, 6, 1, 2, 5, 6, 1, 3, 9, 5, 6]], 4, 2, 4)
    wanted = {(): 1, (1,): 2, (1, 2): 5, (1, 2, 5): 6, (1, 2, 5, 6): 4}
    tokens, parents, _ = tree_inputs(torch.tensor([6]), tree.tokens, tree.parents)
    logits = torch.zeros(1, 8, 16)
    for j in range(8):
        prefix = tuple(_path(tokens[0], parents[0], j)[1:])
        logits[0, j, wanted.get(prefix, 0)] = 5.0
    res = specsampler.verify_tree(logits, tree.tokens, tree.parents, num_nodes=tree.num_nodes, temperature=0.0)
    assert res.path.tolist() == [[0, 4, 5, 6]] and res.tokens.tolist() == [[1, 2, 5, 6, 4]]
    assert path_keep(res.path, 8).tolist() == [[True, True, False, False, False, True, True, True]]


# ------------------------------------------------------------------------------------- the pieces together
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_greedy_tree_loop_matches_target_generate(family):
    """prefill, then steps of: expand_tree (draft), forward_tree (target), verify_tree, keep_path, accept_tree;
    ragged prompts: every row's tokens are target.generate's."""
    target = _model(family, "sdpa")
    draft = perturbed(target, 0.005)
    g = torch.Generator().manual_seed(8)
    rows = [torch.randint(3, V, (n,), generator=g).tolist() for n in (6, 2, 4)]
    prompt = torch.tensor([[0] * (6 - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (6 - len(r)) + [1] * len(r) for r in rows])
    t_lm, d_lm = CachedModel(target, 3), CachedModel(draft, 3)
    for lm in (t_lm, d_lm):
        lm.defer(prompt[:, :-1], mask[:, :-1])
    last, new, accepted, leaves = prompt[:, -1], [[] for _ in rows], 0, 0
    branching = (2, 2, 1)
    n, fed = tree_size(branching)
    with torch.no_grad():
        while min(len(x) for x in new) < 12:
            tree = expand_tree(d_lm, last, branching)
            logits = t_lm.forward_tree(*tree_inputs(last, tree.tokens, tree.parents)[:2]).float()
            res = specsampler.verify_tree(logits, tree.tokens, tree.parents, temperature=0.0)
            t_lm.keep_path(path_keep(res.path, n + 1))
            leaves += int((accept_tree(d_lm, res.path, tree.tokens, fed) >= 0).sum())
            for b in range(3):
                new[b] += res.tokens[b, :int(res.num_accepted[b]) + 1].tolist()
            accepted += int(res.num_accepted.sum())
            last = res.tokens.gather(1, res.num_accepted[:, None])[:, 0]
        for b, r in enumerate(rows):
            ref = target.generate(torch.tensor([r]), max_new_tokens=12, do_sample=False, pad_token_id=0)
            ref = ref[0, len(r):].tolist()  # (up to an EOS)
            assert new[b][:len(ref)] == ref and len(ref) > 3, f"row {b}"
    assert accepted > 0 and leaves > 0  # some step accepted a leaf, which the draft fed at its next step


def _warp(logits, temperature, top_k):
    from transformers.generation import logits_process as lp

    for proc in (lp.TemperatureLogitsWarper(temperature), lp.TopKLogitsWarper(top_k)):
        logits = proc(None, logits)
    return logits


@torch.no_grad()
def _exact_two_tokens(model, prompt: list[int], temperature: float, top_k: int) -> torch.Tensor:
    """[v * v] P(x1, x2 | prompt) under `model`'s warped distribution, by enumeration."""
    v = model.config.vocab_size
    p1 = _warp(model(torch.tensor([prompt])).logits[:, -1].float(), temperature, top_k).softmax(-1)[0]
    both = torch.cat([torch.tensor([prompt]).repeat(v, 1), torch.arange(v)[:, None]], dim=1)
    p2 = _warp(model(both).logits[:, -1].float(), temperature, top_k).softmax(-1)
    return (p1[:, None] * p2).flatten()


@pytest.mark.parametrize("candidates, draft_vocab", [("iid", 8), ("top", 8), ("iid", 6)])
def test_sampled_tree_steps_follow_target_distribution(candidates, draft_vocab):
    """3000 copies of one prompt in one batch, tree steps (2, 2) until each row has two new tokens: their joint is
    the warped target's (chi-square), not the draft's. Draft vocabulary 6 < 8: the draft gives ids 6, 7 q = 0."""
    vocab, rows, temperature, top_k = 8, 3000, 0.8, 6
    target = tiny_model(tiny_config("llama", vocab, 1, 16), 0)
    with torch.no_grad():
        target.get_output_embeddings().weight.mul_(8.0)  # peaked next-token distributions
    draft = perturbed(target, 0.05) if draft_vocab == vocab else tiny_model(tiny_config("llama", draft_vocab, 1, 16), 1)
    prompt = [1, 2, 5, 3]
    t_lm, d_lm = CachedModel(target, rows), CachedModel(draft, rows)
    for lm in (t_lm, d_lm):
        lm.defer(torch.tensor([prompt[:-1]]).repeat(rows, 1).clamp(max=lm.model.config.vocab_size - 1),
                 torch.ones(rows, 3))
    rng, sampling = random.Random(0), {"temperature": temperature, "top_k": top_k}
    last, new, accepted = torch.full((rows,), prompt[-1]), [[] for _ in range(rows)], 0
    n, fed = tree_size((2, 2))
    with torch.no_grad():
        while min(len(x) for x in new) < 2:
            tree = expand_tree(d_lm, last, (2, 2), vocab=vocab, sampling=sampling, candidates=candidates, rng=rng)
            logits = t_lm.forward_tree(*tree_inputs(last, tree.tokens, tree.parents)[:2]).float()
            res = specsampler.verify_tree(logits, tree.tokens, tree.parents, tree.scores, seed=rng.getrandbits(62),
                                          **sampling)
            t_lm.keep_path(path_keep(res.path, n + 1))
            accept_tree(d_lm, res.path, tree.tokens, fed)
            for x, tokens in zip(new, res.tokens.tolist(), strict=True):
                x += [t for t in tokens if t >= 0]  # the path, the next token (then -1)
            accepted += int(res.num_accepted.sum())
            last = res.tokens.gather(1, res.num_accepted[:, None])[:, 0]
    new = torch.tensor([x[:2] for x in new])
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    exact = _exact_two_tokens(target, prompt, temperature, top_k)
    assert int(counts[exact == 0].sum()) == 0
    assert chi2_pvalue_pooled(counts, exact) > 1e-4
    if draft_vocab == vocab:  # the test has power: the draft's own distribution is told apart
        assert chi2_pvalue_pooled(counts, _exact_two_tokens(draft, prompt, temperature, top_k)) < 1e-4
    assert accepted > 0


# ------------------------------------------------------------------------------------ confidence pruning (min_prob)
class _TableDraft:
    """A stand-in for a draft's CachedModel whose scores after a fed token depend on that token only: log(table[t])
    (rows of a hand-made distribution over 6 ids). Records what each forward feeds."""

    def __init__(self, table: list[list[float]]):
        from types import SimpleNamespace

        self.table = torch.tensor(table).log()
        self.device = torch.device("cpu")
        self.model = SimpleNamespace(get_input_embeddings=lambda: SimpleNamespace(weight=torch.empty(6, 1)))
        self.open, self.fed = None, []

    def forward_tree(self, tokens, parents, valid=None):
        real = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid.bool()
        self.fed.append([t[r].tolist() for t, r in zip(tokens, real, strict=True)])
        return self.table[tokens]


# after 0 (the root): 1 .6, 2 .3, 3 .1; after 1: 4 .9, 5 .1; after 2: 4 .6, 5 .4; after 3: 4 .7, 5 .3;
# after 4: 1 .8, 2 .2; after 5: 2 .9, 3 .1
TABLE = [[1e-9, .6, .3, .1, 1e-9, 1e-9], [1e-9, 1e-9, 1e-9, 1e-9, .9, .1], [1e-9, 1e-9, 1e-9, 1e-9, .6, .4],
         [1e-9, 1e-9, 1e-9, 1e-9, .7, .3], [1e-9, .8, .2, 1e-9, 1e-9, 1e-9], [1e-9, 1e-9, .9, .1, 1e-9, 1e-9]]


def test_pruning_keeps_the_likely_nodes_and_the_top1_chain():
    """Top candidates, (3, 2, 1), min_prob 0.15: row 0 (root 0) keeps 1 (.6), 2 (.3) but not 3 (.1); under 1: 4
    (.54) but not 5 (.06); under 2: 4 (.18) but not 5 (.12); then 1 under 1-4 (.432, the chain) but not under 2-4
    (.144). Row 1 (root 4): 1 (.8), 2 (.2); 4 under 1 (.72); 1 under 1-4. Only expanded nodes are fed, the leaves
    are not; rows have their own node counts. min_prob 0.99 keeps the top-1 chain alone."""
    draft = _TableDraft(TABLE)
    tree = expand_tree(draft, torch.tensor([0, 4]), (3, 2, 1), min_prob=0.15)
    assert tree.tokens.tolist() == [[1, 2, 4, 4, 1], [1, 2, 4, 1, 0]]
    assert tree.parents.tolist() == [[-1, -1, 0, 1, 2], [-1, -1, 0, 2, -1]]
    assert tree.widths.tolist() == [[2, 2, 1], [2, 1, 1]] and tree.num_nodes.tolist() == [5, 4]
    assert tree.slots.tolist() == [[1, 2, 3, 4, -1], [1, 2, 3, -1, -1]]  # [last, fed..]: node 1 of row 1 is fed
    assert draft.fed == [[[0], [4]], [[1, 2], [1, 2]], [[4, 4], [4]]] and tree.forwards == 3 and tree.scores is None
    chain = expand_tree(_TableDraft(TABLE), torch.tensor([0, 4]), (3, 2, 1), min_prob=0.99)
    assert chain.tokens.tolist() == [[1, 4, 1], [1, 4, 1]] and chain.parents.tolist() == [[-1, 0, 1]] * 2
    full = expand_tree(_TableDraft(TABLE), torch.tensor([0, 4]), (3, 2, 1))
    assert full.tokens.shape == (2, 15) and full.widths.tolist() == [[3, 6, 6]] * 2
    assert full.slots[0].tolist() == list(range(1, 10)) + [-1] * 6
    with pytest.raises(ValueError, match="min_prob"):
        expand_tree(_TableDraft(TABLE), torch.tensor([0]), (2,), min_prob=1.5)


def test_budget_caps_the_nodes_keeping_the_chain_then_the_likeliest():
    """budget= (top candidates), (3, 2, 1): level by level the chain's node, then the others by path probability,
    room left for the chain's deeper nodes. Budget 5: all 3 root candidates, then the chain alone; budget 4: the
    root's 2 likeliest (row 1: 1 .8 and 2 .2), then the chain; budget 3 (the depth): the chain; with min_prob 0.15 too
    (budget 6): the min_prob tree. Below the depth, or with "iid", it is refused."""
    last = torch.tensor([0, 4])
    five = expand_tree(_TableDraft(TABLE), last[:1], (3, 2, 1), budget=5)
    assert five.tokens.tolist() == [[1, 2, 3, 4, 1]] and five.parents.tolist() == [[-1, -1, -1, 0, 3]]
    four = expand_tree(_TableDraft(TABLE), last, (3, 2, 1), budget=4)
    assert four.tokens.tolist() == [[1, 2, 4, 1]] * 2 and four.parents.tolist() == [[-1, -1, 0, 2]] * 2
    three = expand_tree(_TableDraft(TABLE), last, (3, 2, 1), budget=3)
    assert three.tokens.tolist() == [[1, 4, 1]] * 2 and three.widths.tolist() == [[1, 1, 1]] * 2
    both = expand_tree(_TableDraft(TABLE), last, (3, 2, 1), budget=6, min_prob=0.15)
    assert both.tokens.tolist() == [[1, 2, 4, 4, 1], [1, 2, 4, 1, 0]]
    for kw in (dict(budget=2), dict(budget=4, candidates="iid", sampling={}, rng=random.Random(0))):
        with pytest.raises(ValueError, match="budget caps a tree of top candidates"):
            expand_tree(_TableDraft(TABLE), last, (3, 2, 1), **kw)


def test_pruning_iid_expands_by_the_path_probability_and_keeps_every_draw():
    """i.i.d. candidates, (3, 2, 1), min_prob 0.2: a node has all its draws or none (their number depends on its own
    path probability, not on the draws), the first-child chain always has them; the draft rows are the fed nodes'
    scores, zeros for the others."""
    draft = _TableDraft(TABLE)
    sampling = {"temperature": 1.0}
    last = torch.tensor([0, 4, 0, 5])
    tree = expand_tree(draft, last, (3, 2, 1), sampling=sampling, candidates="iid", rng=random.Random(3),
                       min_prob=0.2)
    probs, grown, pruned = torch.tensor(TABLE), 0, 0
    for b in range(4):
        n = int(tree.num_nodes[b])
        tokens, parents = tree.tokens[b, :n].tolist(), tree.parents[b, :n].tolist()
        prob, chain, depth = {-1: 1.0}, {-1: True}, {-1: 0}
        for i, (t, a) in enumerate(zip(tokens, parents, strict=True)):
            up = int(last[b]) if a < 0 else tokens[a]
            prob[i], depth[i] = prob[a] * float(probs[up, t]), depth[a] + 1
            chain[i] = chain[a] and parents.index(a) == i  # the first child of a chain node
        for node in [-1, *range(n)]:
            kids = [i for i, a in enumerate(parents) if a == node]
            expanded = depth[node] < 3 and (chain[node] or prob[node] >= 0.2)
            assert len(kids) == ((3, 2, 1)[depth[node]] if expanded else 0), (b, node)
            row = tree.scores[b, node + 1]
            fed = int(last[b]) if node < 0 else tokens[node]
            if expanded:
                torch.testing.assert_close(row, probs[fed].log())
            else:
                assert bool((row == 0).all())
        assert (tree.slots[b, :n] >= 0).tolist() == [i in parents for i in range(n)]
        grown += sum(1 for i in range(n) if not chain[i] and i in parents)
        pruned += sum(1 for i in range(n) if depth[i] < 3 and i not in parents)
    assert grown > 0 and pruned > 0  # both rules met off the chain


@pytest.mark.parametrize("candidates", ["top", "iid"])
def test_pruning_that_keeps_everything_is_the_full_tree(draft, candidates):
    """min_prob=0 keeps and grows every node: the pruned path (compacted blocks, frontier gathers, scattered slots)
    gives the unpruned tree, node for node, with the same draws, forwards and draft rows (cache with holes)."""
    trees = []
    for min_prob in (None, 0.0):
        lm, _, last = _cache_with_holes(draft, 1, torch.Generator().manual_seed(4))
        kw = dict(sampling={"temperature": 0.8, "top_k": 5}, rng=random.Random(2)) if candidates == "iid" else {}
        with torch.no_grad():
            trees.append(expand_tree(lm, last, (3, 2, 1), candidates=candidates, min_prob=min_prob, **kw))
    full, pruned = trees
    for name in ("tokens", "parents", "slots", "widths"):
        assert torch.equal(getattr(full, name), getattr(pruned, name)), name
    assert full.forwards == pruned.forwards == 3 and full.widths.tolist() == [[3, 6, 6]] * 3
    assert full.slots[0].tolist() == list(range(1, 10)) + [-1] * 6
    if candidates == "iid":
        torch.testing.assert_close(full.scores, pruned.scores, atol=ATOL[torch.float32], rtol=0)
