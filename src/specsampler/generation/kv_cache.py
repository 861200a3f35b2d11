"""The KV cache with holes: a model, its ``DynamicCache`` and the [B, L] mask over the cache's slots.

Both models of :func:`specsampler.generate` keep one ``DynamicCache`` whose slots are shared by the whole batch, plus a
[B, L] attention mask over those slots (left padding of the prompts included). Invariant: each row's last token is in
neither cache; it is the first token fed at the next step. After the target's forward over [last, d_1..d_K] the K + 1
new slots of row b hold valid keys for [last, d_1..d_{n_b}] and stale ones for the rejected drafts; the stale slots
become *holes*: their mask entries are set to 0, so no later query attends to them. Slots stale for every row (past
max_b n_b) are cropped off. Position ids are counted over valid slots only (position = number of valid slots before
it), so rotary (Llama, Qwen2) and learned (GPT-2) positions are those of the contiguous sequence, and every row
computes exactly what ``target.generate(row)`` computes, up to floating-point summation order. A cache grows by
max_b n_b + 1 slots per step, never more than the longest row; finished rows are removed (:meth:`CachedModel.select`).

Token trees (:meth:`CachedModel.forward_tree`, :meth:`CachedModel.keep_path`). A forward may feed a tree instead of
a sequence: each fed token names its parent, and sees the cache's valid slots, its ancestors and itself, through a
[B, 1, T, L + T] additive float mask (0: seen, the dtype's lowest value: hidden) that the model takes as it is; its
position is the number of valid slots before the tree plus its depth (valid ancestors). The fed slots stay *open*
(parents may point at them from the next tree forward: a draft grows its tree level by level) until
:meth:`CachedModel.keep_path` keeps one root path of them per row (the accepted path) and turns the rest into holes:
kept slots in slot order along a root path have exactly the positions of the contiguous sequence, so the invariant
above holds again. The target feeds [last, node_0..node_{N-1}] (parents -1, a_i + 1) in one forward and gets the
[B, N + 1, V] scores :func:`specsampler.verify_tree` takes.

Which models take such a mask: transformers (4.57 and 5.x alike) hands a 4D ``attention_mask`` through its mask
builder (``masking_utils._preprocess_mask_arguments``: "already prepared, returned as-is") to the attention function;
"eager" *adds* it to the attention weights (a bool mask would add 0 or 1: silently wrong, hence the float format), and
"sdpa" passes it to ``scaled_dot_product_attention`` (a float mask must have the query's dtype). Flash-attention
kernels take no arbitrary mask and flex attention wants a ``BlockMask``: those implementations are refused by name,
and every model is probed once (:func:`check_tree_attention`: does a 4D mask change what a token sees?).
"""

from __future__ import annotations

import inspect
import weakref

import torch

__all__ = ["CachedModel", "check_tree_attention", "input_device", "tree_ancestors"]

#: attention implementations that take a 4D float attention mask as given (eager adds it, sdpa passes it on)
TREE_ATTENTION = ("eager", "sdpa")
_TREE_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> the probe passed


def input_device(model) -> torch.device:
    """Where `model` takes its input ids (its input embeddings' device)."""
    return model.get_input_embeddings().weight.device


def tree_ancestors(parents: torch.Tensor) -> torch.Tensor:
    """Which tokens of a tree are ancestors of which, by pointer jumping (log2 T batched matmuls).

    Parameters
    ----------
    parents : torch.Tensor
        [B, T] int64: token i's parent in [-1, i) (-1: a root).

    Returns
    -------
    torch.Tensor
        [B, T, T] bool: ``anc[b, i, j]`` is True where j is i or an ancestor of i.
    """
    t = parents.shape[1]
    ar = torch.arange(t, device=parents.device)
    anc = (ar[:, None] == ar[None, :]) | (parents[:, :, None] == ar[None, None, :])
    hops = 1  # anc covers paths of up to `hops` steps; a tree of T tokens has paths of at most T - 1
    while hops < t - 1:
        anc = torch.bmm(anc.float(), anc.float()) > 0
        hops *= 2
    return anc


def check_tree_attention(model) -> None:
    """Refuse, naming it, a model that cannot take a 4D attention mask (once per model; a probe of two tokens).

    The attention implementation must be one of :data:`TREE_ATTENTION` (flash-attention kernels take no arbitrary
    mask, flex attention wants a ``BlockMask``); then the model runs [a, b] at positions [0, 1] with a 4D mask that
    hides a from b, and b's logits must be those of b alone at position 1: a model that drops or rebuilds the mask
    fails.

    Raises
    ------
    NotImplementedError
        Naming the model's class and its attention implementation.
    """
    if model in _TREE_OK:
        return
    name, impl = type(model).__name__, getattr(model.config, "_attn_implementation", None)
    if impl not in TREE_ATTENTION:
        raise NotImplementedError(f"{name} runs attention with {impl!r}: a token tree needs a 4D attention mask, "
                                  f"which only {' and '.join(TREE_ATTENTION)} take as given (load the model with "
                                  f"attn_implementation='sdpa')")
    emb = model.get_input_embeddings().weight
    ids = torch.tensor([[0, min(1, emb.shape[0] - 1)]], device=emb.device)
    pos = torch.arange(2, device=emb.device)[None]  # (not [0, 0]: transformers 5 reads that as two packed sequences)
    mask = torch.full((1, 1, 2, 2), torch.finfo(emb.dtype).min, dtype=emb.dtype, device=emb.device)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 1] = 0
    with torch.no_grad():
        try:
            tree = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[0, 1].float()
        except Exception as err:  # any failure means: no 4D masks
            raise NotImplementedError(f"{name} ({impl}) fails on a 4D attention mask, which a token tree needs: "
                                      f"{type(err).__name__}: {err}") from err
        alone = model(input_ids=ids[:, 1:], position_ids=pos[:, 1:], use_cache=False).logits[0, 0].float()
    tol = (1e-3 if emb.dtype == torch.float32 else 3e-2) * (1 + float(alone.abs().max()))
    if not torch.allclose(tree, alone, rtol=0, atol=tol):
        raise NotImplementedError(f"{name} ({impl}) does not apply a 4D attention mask as given (a token hidden by "
                                  f"it still changed the logits), so it cannot score a token tree")
    _TREE_OK[model] = True


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] bool -> [B, 1, Q, K] float mask in `dtype`: 0 where allowed, the dtype's lowest value elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


class CachedModel:
    """A model, its ``DynamicCache`` and the [B, L] mask over the cache's slots (0 = left padding or a hole)."""

    def __init__(self, model, batch: int):
        from transformers import DynamicCache

        self.model = model
        self.device = input_device(model)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_arg = "logits_to_keep" in params
        try:
            self.cache = DynamicCache(config=model.config)
        except TypeError:  # older signatures
            self.cache = DynamicCache()
        if any(getattr(layer, "is_sliding", False) for layer in getattr(self.cache, "layers", [])):
            raise NotImplementedError("sliding-window attention layers are not supported: a window counts cache "
                                      "slots, and holes would shift it")
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=self.device)
        # Whether some slot is padding or a hole, known on the host: without any, the model gets no attention mask
        # and runs its plain causal path (a single row never has holes).
        self.holes = False
        self.pending = None  # (tokens, valid) [B, P]: a prefill deferred to the next forward, which feeds it first
        # The open tree slots (the cache's last S), fed by forward_tree since the last keep_path: (parents [B, S]
        # int64 in [-1, i) over those slots, valid [B, S] bool); None when no tree is open
        self.open = None
        # [B, T, H] the last hidden states (what the output layer reads) of the last forward's returned positions,
        # when that forward was asked for them (hidden=True); else None
        self.hidden = None

    def defer(self, tokens: torch.Tensor, valid: torch.Tensor, holes: bool | None = None) -> None:
        """Feed [B, P] `tokens` (`valid` [B, P], 0 for padding or a hole) at the start of the next forward, after any
        deferred before: the prefill and the first step share one forward (transformers' assisted generation does the
        same), and a draft that skipped a step catches up. `holes`: whether `valid` has a 0, when the caller knows."""
        self._closed("defer")
        if tokens.shape[1]:
            valid = valid.to(self.device, torch.long)
            self.holes = self.holes or (holes if holes is not None else not bool(valid.all()))
            tokens = tokens.to(self.device)
            if self.pending is not None:
                tokens, valid = torch.cat([self.pending[0], tokens], dim=1), torch.cat([self.pending[1], valid], dim=1)
            self.pending = (tokens, valid)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, last_only: bool = False,
                holes: bool | None = None, hidden: bool = False) -> torch.Tensor:
        """Append [B, T] `tokens` (`valid` [B, T]: 0 marks a hole; None: every token is real) to the cache; return
        their [B, T or 1, V] logits. `holes`: whether `valid` has a 0, when the caller knows (else it is read).
        `hidden`: keep their last hidden states in :attr:`hidden` ([B, T or 1, H]; else it is None)."""
        self._closed("forward")
        if valid is None:
            valid = torch.ones_like(tokens, dtype=torch.long)
        else:
            valid = valid.to(torch.long)
            self.holes = self.holes or (holes if holes is not None else not bool(valid.all()))  # (prefill: once)
        width = 1 if last_only else tokens.shape[1]
        if self.pending is not None:
            tokens, valid = torch.cat([self.pending[0], tokens], dim=1), torch.cat([self.pending[1], valid], dim=1)
            self.pending, last_only = None, True
        positions = self.mask.sum(dim=1, keepdim=True) + valid.cumsum(dim=1) - valid
        self.mask = torch.cat([self.mask, valid], dim=1)
        kwargs = {self.cache_arg: self.cache, "use_cache": True}
        if last_only and self.keep_arg:
            kwargs["logits_to_keep"] = width
        if hidden:
            kwargs["output_hidden_states"] = True
        out = self.model(input_ids=tokens, attention_mask=self.mask if self.holes else None, position_ids=positions,
                         **kwargs)
        self.hidden = out.hidden_states[-1][:, -width:] if hidden else None
        return out.logits[:, -width:] if last_only else out.logits

    def keep(self, n: torch.Tensor, width: int, n_max: int, n_min: int) -> None:
        """Of the last `width` slots, keep the first n_b + 1 of row b (`n` [B]; the rest become holes) and crop
        the slots past the first `n_max` + 1, which no row keeps (`n_min`: the fewest any row kept, minus 1)."""
        self._closed("keep")
        self.holes = self.holes or n_min < n_max
        self.mask[:, -width:] = (torch.arange(width, device=self.device)[None, :] <= n[:, None]).to(self.mask.dtype)
        drop = width - min(n_max + 1, width)
        if drop:
            self.cache.crop(-drop)
            self.mask = self.mask[:, :-drop]

    def select(self, rows: torch.Tensor) -> None:
        """Keep the batch rows `rows` [B'] only."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        if self.pending is not None:
            self.pending = (self.pending[0][rows], self.pending[1][rows])
        if self.open is not None:
            self.open = (self.open[0][rows], self.open[1][rows])

    def _closed(self, what: str) -> None:
        if self.open is not None:
            raise RuntimeError(f"CachedModel.{what}: a token tree is open (forward_tree without keep_path)")

    def forward_tree(self, tokens: torch.Tensor, parents: torch.Tensor, valid: torch.Tensor | None = None,
                     hidden: bool = False) -> torch.Tensor:
        """Feed a token tree (or the next level of an open one) in one forward; return its tokens' logits.

        Each fed token sees the cache's valid slots (a deferred prefill included, fed first as a sequence), its
        ancestors among the open tree slots and the fed tokens, and itself; its position is the number of valid
        slots before the tree plus its valid ancestors in it. The fed slots join the open tree until
        :meth:`keep_path`. The mask is [B, 1, P + T, L + P + T] in the model's dtype: a deferred prefill of P tokens
        costs P^2 entries per row (transformers builds a bool mask of that shape for a padded prefill too).

        Parameters
        ----------
        tokens : torch.Tensor
            [B, T] int64 token ids, T >= 1.
        parents : torch.Tensor
            [B, T] int64: token j's parent, an index into the open tree slots then the fed tokens, in [-1, S + j)
            (S: the open slots before this call; -1: a root, after the cache's committed slots). The target scores
            [last, node_0..node_{N-1}] with parents [-1, a_0 + 1, ..] (:func:`.trees.tree_inputs`).
        valid : torch.Tensor, optional
            [B, T] bool or int: 0 marks a fed token as a hole (a row's padding node): no other token sees it, and it
            is never kept. Its descendants must be holes too. None: every token is real.
        hidden : bool
            Keep the fed tokens' last hidden states in :attr:`hidden` ([B, T, H]; else it is None).

        Returns
        -------
        torch.Tensor
            [B, T, V] the fed tokens' logits (row j: the scores after token j's path).
        """
        check_tree_attention(self.model)
        t = tokens.shape[1]
        if t == 0:
            raise ValueError("forward_tree needs at least one token")
        tokens, parents = tokens.to(self.device), parents.to(self.device, torch.int64)
        valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid.to(self.device, torch.bool)
        s = 0 if self.open is None else self.open[0].shape[1]
        if tokens.device.type == "cpu" and bool(((parents < -1) | (parents >= s + torch.arange(t))).any()):
            raise ValueError(f"parents must hold, at fed token j, a parent in [-1, S + j) with S = {s} open slots; "
                             f"got {parents.tolist()}")
        pend_tokens, pend_valid = self.pending if self.pending is not None else (tokens[:, :0], valid[:, :0].long())
        self.pending = None
        tree_parents = parents if self.open is None else torch.cat([self.open[0], parents], dim=1)
        tree_valid = valid if self.open is None else torch.cat([self.open[1], valid], dim=1)
        allowed, positions = self._tree_mask(tree_parents, tree_valid, pend_valid.bool(), t)
        self.mask = torch.cat([self.mask, pend_valid.long(), valid.long()], dim=1)
        self.open = (tree_parents, tree_valid)
        kwargs = {self.cache_arg: self.cache, "use_cache": True}
        if self.keep_arg and pend_tokens.shape[1]:
            kwargs["logits_to_keep"] = t
        if hidden:
            kwargs["output_hidden_states"] = True
        dtype = self.model.get_input_embeddings().weight.dtype
        out = self.model(input_ids=torch.cat([pend_tokens, tokens], dim=1), attention_mask=_additive(allowed, dtype),
                         position_ids=positions, **kwargs)
        self.hidden = out.hidden_states[-1][:, -t:] if hidden else None
        return out.logits[:, -t:]

    def _tree_mask(self, tree_parents: torch.Tensor, tree_valid: torch.Tensor, pend_valid: torch.Tensor, t: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the P deferred and T fed tokens see ([B, P + T, L + P + T] bool) and their positions ([B, P + T]);
        `tree_parents`, `tree_valid` [B, S + T] cover the open slots and the fed tokens (S = 0 when P > 0)."""
        batch, p = pend_valid.shape
        s = tree_parents.shape[1] - t
        committed = self.mask[:, :self.mask.shape[1] - s].bool()  # [B, C]
        anc = tree_ancestors(tree_parents)[:, s:]  # [B, T, S + T]
        eye = torch.eye(s + t, dtype=torch.bool, device=self.device)[s:]
        tree_sees = anc & (tree_valid[:, None, :] | eye)
        base = committed.sum(dim=1, keepdim=True) + pend_valid.sum(dim=1, keepdim=True)
        tree_pos = base + (anc & tree_valid[:, None, :]).sum(dim=2) - tree_valid.long()[:, s:]
        pend_pos = committed.sum(dim=1, keepdim=True) + pend_valid.cumsum(dim=1) - pend_valid.long()
        causal = torch.ones(p, p, dtype=torch.bool, device=self.device).tril()
        pend_sees = (causal & pend_valid[:, None, :]) | torch.eye(p, dtype=torch.bool, device=self.device)
        top = torch.cat([committed[:, None].expand(batch, p, -1), pend_sees,
                         pend_valid.new_zeros(batch, p, s + t)], dim=2)
        bottom = torch.cat([committed[:, None].expand(batch, t, -1), pend_valid[:, None].expand(batch, t, p),
                            tree_sees], dim=2)
        return torch.cat([top, bottom], dim=1), torch.cat([pend_pos, tree_pos], dim=1)

    def keep_path(self, keep: torch.Tensor) -> None:
        """Close the open tree: keep the flagged slots of each row, make the rest holes, crop the slots no row keeps.

        Parameters
        ----------
        keep : torch.Tensor
            [B, S] bool over the open slots (S: all tokens fed by forward_tree since the last keep_path): the kept
            slots of a row must be one path from a root down, so that their positions stay those of the contiguous
            sequence (:func:`.trees.path_keep` makes it from a verified path). One host synchronisation.
        """
        if self.open is None:
            raise RuntimeError("keep_path: no token tree is open")
        s = self.open[0].shape[1]
        if tuple(keep.shape) != (self.mask.shape[0], s):
            raise ValueError(f"keep must be [B, S] = {[self.mask.shape[0], s]} (the open slots), got "
                             f"{tuple(keep.shape)}")
        keep = keep.to(self.device, torch.bool) & self.open[1]
        self.mask[:, self.mask.shape[1] - s:] = keep.long()
        self.open = None
        cols = keep.any(dim=0).cpu()
        width = int(cols.nonzero().max()) + 1 if bool(cols.any()) else 0
        self.holes = self.holes or not bool(keep[:, :width].all())
        if width < s:
            self.cache.crop(-(s - width))
            self.mask = self.mask[:, :self.mask.shape[1] - (s - width)]

