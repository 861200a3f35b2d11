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
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["CachedModel", "input_device"]


def input_device(model) -> torch.device:
    """Where `model` takes its input ids (its input embeddings' device)."""
    return model.get_input_embeddings().weight.device


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

    def defer(self, tokens: torch.Tensor, valid: torch.Tensor, holes: bool | None = None) -> None:
        """Feed [B, P] `tokens` (`valid` [B, P], 0 for padding or a hole) at the start of the next forward, after any
        deferred before: the prefill and the first step share one forward (transformers' assisted generation does the
        same), and a draft that skipped a step catches up. `holes`: whether `valid` has a 0, when the caller knows."""
        if tokens.shape[1]:
            valid = valid.to(self.device, torch.long)
            self.holes = self.holes or (holes if holes is not None else not bool(valid.all()))
            tokens = tokens.to(self.device)
            if self.pending is not None:
                tokens, valid = torch.cat([self.pending[0], tokens], dim=1), torch.cat([self.pending[1], valid], dim=1)
            self.pending = (tokens, valid)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, last_only: bool = False,
                holes: bool | None = None) -> torch.Tensor:
        """Append [B, T] `tokens` (`valid` [B, T]: 0 marks a hole; None: every token is real) to the cache; return
        their [B, T or 1, V] logits. `holes`: whether `valid` has a 0, when the caller knows (else it is read)."""
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
        out = self.model(input_ids=tokens, attention_mask=self.mask if self.holes else None, position_ids=positions,
                         **kwargs)
        return out.logits[:, -width:] if last_only else out.logits

    def keep(self, n: torch.Tensor, width: int, n_max: int, n_min: int) -> None:
        """Of the last `width` slots, keep the first n_b + 1 of row b (`n` [B]; the rest become holes) and crop
        the slots past the first `n_max` + 1, which no row keeps (`n_min`: the fewest any row kept, minus 1)."""
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

