"""Prompts of ``specsampler generate``: read from the options, encoded, left-padded into a batch, and the new tokens
cut from the generated sequences."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CLIError


def read_prompts(prompt: list[str] | None, prompts_file: str | None) -> list[str]:
    """The prompts of ``--prompt`` or ``--prompts-file`` (one per non-blank line).

    Parameters
    ----------
    prompt : list of str or None
        ``--prompt``, repeated.
    prompts_file : str or None
        ``--prompts-file``.

    Returns
    -------
    list of str

    Raises
    ------
    CLIError
        Naming ``--prompts-file`` (missing, unreadable, or empty) or ``--prompt`` (neither given).
    """
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise CLIError("--prompts-file", f"no such file: {prompts_file}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError("--prompts-file", f"cannot read {prompts_file}: {exc}") from None
        prompts = [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]
        if not prompts:
            raise CLIError("--prompts-file", f"{prompts_file} holds no prompt")
        return prompts
    if not prompt:
        raise CLIError("--prompt", "give --prompt (repeatable) or --prompts-file")
    return list(prompt)


def encode_prompts(tokenizer, prompts: list[str], raw: bool) -> list[list[int]]:
    """Token ids of each prompt: the chat template applied (a user turn, then the assistant's) unless `raw` or the
    tokenizer has none.

    Raises
    ------
    CLIError
        Naming ``--prompt``: a prompt that encodes to no tokens.
    """
    rows = []
    for p in prompts:
        if not raw and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(p)["input_ids"]
        if not ids:
            raise CLIError("--prompt", f"prompt {p!r} encodes to no tokens")
        rows.append(list(ids))
    return rows


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded [B, P] input ids and attention mask of token lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, width - len(r):] = 1
    return ids, mask


def new_tokens(sequences: torch.Tensor, prompt_width: int, eos: list[int]) -> list[list[int]]:
    """Each row's new tokens: after the prompt, up to and including the first EOS (padding after it dropped)."""
    out = []
    for row in sequences[:, prompt_width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        out.append(row[:cut])
    return out


def batches(rows: list[list[int]], size: int):
    """``(first row's index, rows)`` of each batch of at most `size` rows."""
    for lo in range(0, len(rows), size):
        yield lo, rows[lo:lo + size]
