"""What a speculative generation call can run on: decoder-only models (:func:`check_models`) and left-padded prompts
of at least one token (:func:`check_inputs`). :mod:`.settings` re-exports both."""

from __future__ import annotations

import torch

__all__ = ["check_inputs", "check_models"]


def check_models(*models, who: str = "specsampler.generate") -> None:
    """A ValueError naming an encoder-decoder model: speculative generation here continues a decoder-only LM's
    input ids (an encoder-decoder model would continue its encoder's input)."""
    for role, model in zip(("target", "draft"), models, strict=False):
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ValueError(f"{who} supports decoder-only models; the {role} ({type(model).__name__}) is an "
                             f"encoder-decoder model (config.is_encoder_decoder=True): use its own generate()")


def check_inputs(input_ids, attention_mask) -> torch.Tensor:
    """The [B, P] mask of left-padded prompts (None: all ones); a ValueError naming the argument for a wrong shape or
    type, for P = 0 (no last token to continue from), or unless every row ends with a token. B = 0 passes: the
    result is then empty."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be a [B, P] integer tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids!r}")
    if input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must hold at least one token per row (got shape {tuple(input_ids.shape)}): "
                         f"generation continues each row's last token")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor of input_ids' shape {tuple(input_ids.shape)}, got {got}")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("prompts must be left padded (attention_mask[:, -1] must be 1)")
    return attention_mask
