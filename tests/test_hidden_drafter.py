"""A drafter of one's own, reading the target's hidden states (EAGLE's idea, small), through the declared protocol.

How to write a drafter (:mod:`specsampler.generation.protocol`): pass ``generate(target, draft=source)`` an object
with ``start_drafter(call)``; per call it returns a drafter with ``propose(last, limits)`` -> ``Proposal``,
``accept(target_step)`` and ``select_rows(rows)``, plus ``forwards`` and ``wants_hidden``. With
``wants_hidden = True`` the loop asks the target's forward for its last hidden states and hands them to ``accept``
(``TargetStep.hidden``, ``TargetStep.at_end``): nothing in the loop changes. Here an MLP head, trained for a few
hundred steps on the target's own text, maps (the target's last hidden state, the next token's embedding) to the
next hidden state and drafts with the target's output layer. The output is exact whatever it proposes: greedy rows
equal ``target.generate`` token for token, and a sampled run follows the target's distribution (chi-square).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from util import chi2_pvalue_pooled, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
from specsampler.generation.protocol import DraftCall, Proposal, TargetStep, TreeProposal  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
V = 32


class HeadDrafter:
    """The per-call drafter: from the target's hidden state h at the slot that drew `last`, draft
    d_1 = argmax lm_head(f_1), f_1 = head([h, embed(last)]), then d_2 from f_2 = head([f_1, embed(d_1)]), ...
    (greedy drafts: point masses, so verification needs no draft scores). `log` keeps, per step, each running row's
    index and the hidden state it was handed."""

    wants_hidden = True

    def __init__(self, head, target, batch: int, k: int):
        self.head, self.k, self.forwards = head, k, 0
        self.embed, self.out = target.get_input_embeddings(), target.get_output_embeddings()
        self.feature = None  # [B, H] the target's last hidden state that drew each row's last token
        self.rows, self.log = list(range(batch)), []

    @torch.no_grad()
    def propose(self, last: torch.Tensor, limits: list[int]) -> Proposal:
        k = min(self.k, max(limits))
        if self.feature is None or k == 0:  # the first step: the target has not run yet
            return Proposal(last.new_zeros(last.shape[0], 0), None, [0] * len(limits))
        feature, token, drafts = self.feature, last, []
        for _ in range(k):
            feature = self.head(torch.cat([feature, self.embed(token)], dim=-1))
            token = self.out(feature).argmax(dim=-1)
            drafts.append(token)
        return Proposal(torch.stack(drafts, dim=1), None, [min(k, m) for m in limits])

    def accept(self, target: TargetStep) -> None:
        self.feature = target.at_end(target.hidden)
        self.log.append((list(self.rows), [len(a) for a in target.accepted], self.feature.clone()))

    def select_rows(self, rows: torch.Tensor) -> None:
        self.feature = self.feature[rows.to(self.feature.device)]
        self.rows = [self.rows[i] for i in rows.tolist()]


class HeadTreeDrafter(HeadDrafter):
    """The same head growing a token tree (the tree protocol): at depth d each frontier node's top ``branching[d]``
    tokens under the head's scores, breadth-first (point masses: ``verify_tree`` needs no draft scores); ``accept``
    reads the hidden state at the accepted path's end (``TargetStep.at_end`` follows ``TargetStep.path``)."""

    def __init__(self, head, target, batch: int, branching: tuple[int, ...]):
        super().__init__(head, target, batch, len(branching))
        self.branching = branching

    @torch.no_grad()
    def propose(self, last: torch.Tensor, limits: list[int]) -> TreeProposal:
        depth = 0 if self.feature is None else min(len(self.branching), max(limits))
        batch = last.shape[0]
        feature, front, nodes = self.feature, last[:, None], last.new_full((batch, 1), -1)
        tokens, parents, widths = [last.new_zeros(batch, 0)], [last.new_zeros(batch, 0)], []
        for c in self.branching[:depth]:
            m = front.shape[1]
            feature = self.head(torch.cat([feature[:, None].expand(-1, m, -1) if feature.dim() == 2 else feature,
                                           self.embed(front)], dim=-1))  # [B, M, H]
            kids = self.out(feature).topk(c, dim=-1).indices.reshape(batch, m * c)
            tokens.append(kids)
            parents.append(nodes.repeat_interleave(c, dim=1))
            nodes = sum(widths) + torch.arange(m * c, device=last.device).expand(batch, -1)
            widths.append(m * c)
            feature, front = feature.repeat_interleave(c, dim=1), kids
        levels = [min(limit, depth) for limit in limits]
        return TreeProposal(torch.cat(tokens, dim=1), torch.cat(parents, dim=1), None,
                            [sum(widths[:d]) for d in levels], levels)


class HiddenStateDrafter:
    """What ``draft=`` takes: starts a :class:`HeadDrafter` per call, a :class:`HeadTreeDrafter` with
    ``draft_tree`` (its branching); prompt lookup's tries are not its kind."""

    def __init__(self, head, target):
        self.head, self.target, self.started = head, target, []

    def start_drafter(self, call: DraftCall) -> HeadDrafter:
        batch, tree = call.input_ids.shape[0], call.settings.draft_tree
        if call.settings.tree and tree is None:
            raise ValueError("HiddenStateDrafter grows draft_tree= trees, not prompt_lookup_num_candidates tries")
        drafter = (HeadDrafter(self.head, self.target, batch, call.max_k) if tree is None else
                   HeadTreeDrafter(self.head, self.target, batch, tree))
        self.started.append(drafter)
        return drafter


def _train_head(target, device, steps: int = 300):
    """An MLP head [h_t, embed(x_{t+1})] -> h_{t+1}, fitted on the target's own sampled text (mean squared error
    on the hidden state plus cross-entropy of the target's output layer on x_{t+2}), Adam, a fixed seed."""
    torch.manual_seed(0)
    hidden = target.config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(2 * hidden, 2 * hidden), torch.nn.SiLU(),
                               torch.nn.Linear(2 * hidden, hidden)).to(device)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, V, (64, 3), generator=g).to(device)
    with torch.no_grad():
        text = target.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, max_new_tokens=24,
                               pad_token_id=0, eos_token_id=None)
        states = target(text, output_hidden_states=True).hidden_states[-1]
        embeds = target.get_input_embeddings()(text)
    x = torch.cat([states[:, :-2], embeds[:, 1:-1]], dim=-1)
    out = target.get_output_embeddings()
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        pred = head(x)
        loss = torch.nn.functional.mse_loss(pred, states[:, 1:-1]) + torch.nn.functional.cross_entropy(
            out(pred).reshape(-1, V), text[:, 2:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def target_and_head():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = tiny_model(tiny_config("llama", V), 0).to(device)
    target.generation_config.eos_token_id = None  # no EOS: every row runs its whole budget
    with torch.no_grad():  # peaked next-token distributions: a head can learn them, drafts get accepted
        target.get_output_embeddings().weight.mul_(20.0)
    return target, _train_head(target, device)


def _ragged(lengths, device, seed=0):
    """Left-padded random prompts of the given lengths (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, width - n:], mask[b, width - n:] = torch.randint(1, V, (n,), generator=g), 1
    return ids.to(device), mask.to(device)


@pytest.mark.parametrize("shape", [dict(num_draft_tokens=3), dict(num_draft_tokens=3, verify_method="block"),
                                   dict(draft_tree=(2, 2, 1)), dict(draft_tree=(2, 2, 1), verify_method="traversal")],
                         ids=["chain-token", "chain-block", "tree-token", "tree-traversal"])
def test_greedy_hidden_state_drafter_equals_target_generate(target_and_head, shape):
    """Greedy, chains and trees: every row of a ragged, left-padded batch equals target.generate on that row alone,
    token for token; the head's drafts are accepted (the hidden states reached it: more accepted drafts than target
    forwards), and each hidden state it was handed is the target's own at the position before the row's last token
    (a plain forward over the row, float32 tolerance)."""
    target, head = target_and_head
    device = target.device
    ids, mask = _ragged([7, 3, 1, 5], device)
    source = HiddenStateDrafter(head, target)
    out = specsampler.generate(target, source, ids, mask, max_new_tokens=20, eos_token_id=[], pad_token_id=0,
                               **shape)
    width = ids.shape[1]
    finals = []
    for b in range(ids.shape[0]):
        row = ids[b, mask[b].bool()][None]
        ref = target.generate(row, attention_mask=torch.ones_like(row), do_sample=False, max_new_tokens=20,
                              eos_token_id=None, pad_token_id=0)[0]
        assert out.sequences[b, width:].tolist() == ref[row.shape[1]:].tolist(), f"row {b}"
        finals.append(ref)
    assert out.stats.accepted > out.stats.target_forwards
    drafter = source.started[0]
    lengths = [int(m.sum()) for m in mask]
    with torch.no_grad():
        states = [target(f[None], output_hidden_states=True).hidden_states[-1][0] for f in finals]
    for rows, gained, features in drafter.log:
        for i, r in enumerate(rows):
            lengths[r] += gained[i]
            torch.testing.assert_close(features[i], states[r][lengths[r] - 2], rtol=1e-4, atol=1e-4)


def test_sampled_hidden_state_drafter_follows_target_distribution(target_and_head):
    """Sampling at temperature 0.7: 4000 copies of one prompt, the third new token (the first step drafts nothing,
    the second verifies the head's two drafts: the third token is the second draft, its correction or the bonus)
    follows the warped target's exact marginal, summed over the first two tokens by enumeration (chi-square, pooled
    cells, p > 1e-3); drafts were accepted."""
    target, head = target_and_head
    device, n, temperature = target.device, 4000, 0.7
    prompt = torch.tensor([[5, 9, 2]], device=device)
    out = specsampler.generate(target, HiddenStateDrafter(head, target), prompt.repeat(n, 1), max_new_tokens=4,
                               num_draft_tokens=2, do_sample=True, temperature=temperature, seed=1234,
                               eos_token_id=[], pad_token_id=0)
    assert out.stats.accepted > n // 4
    with torch.no_grad():
        p1 = (target(prompt).logits[0, -1].float() / temperature).softmax(-1)  # [V]
        firsts = torch.cat([prompt.repeat(V, 1), torch.arange(V, device=device)[:, None]], dim=1)
        p2 = (target(firsts).logits[:, -1].float() / temperature).softmax(-1)  # [V, V]
        seconds = torch.cat([firsts.repeat_interleave(V, dim=0), torch.arange(V, device=device).repeat(V)[:, None]],
                            dim=1)
        p3 = (target(seconds).logits[:, -1].float() / temperature).softmax(-1).view(V, V, V)
    exact = torch.einsum("a,ab,abc->c", p1.double(), p2.double(), p3.double())
    counts = torch.bincount(out.sequences[:, prompt.shape[1] + 2].cpu(), minlength=V)
    assert chi2_pvalue_pooled(counts, exact.cpu()) > 1e-3


def test_hidden_state_drafter_refuses_what_it_cannot_draft(target_and_head):
    """A drafter refuses, naming the option, a shape it has no form for (the factory hands it the settings)."""
    target, head = target_and_head
    prompt = torch.tensor([[1, 2, 1, 2]], device=target.device)
    with pytest.raises(ValueError, match="prompt_lookup_num_candidates"):
        specsampler.generate(target, HiddenStateDrafter(head, target), prompt, max_new_tokens=2,
                             prompt_lookup_num_candidates=2, eos_token_id=[], pad_token_id=0)
