"""transformers' logits processors at every scored position of a speculative step, with that position's prefix.

``model.generate`` calls its ``LogitsProcessorList`` once per new token with the sequence so far (the left-padded
prompt, then the new tokens): ``scores = processors(input_ids [B, L], scores [B, V])``. A speculative step scores
K + 1 positions of each row at once, and row b's position j continues its sequence *and the drafts d_1..d_j before
it*; the draft model's i-th forward continues the sequence and d_1..d_{i-1}. :class:`PrefixProcessors` applies the
list to every such position with exactly that prefix, as transformers' own assisted generation does position by
position. Prefixes of equal length go through the list together (one call per distinct length: K + 1 calls per
target step at B = 1), because processors read ``input_ids.shape[-1]`` (min_new_tokens, forced EOS, ...).

The processors come first and the warpers (temperature, top-k, top-p, min-p) after them, as in ``model.generate``:
:func:`split_processors` separates a prepared list into the processors applied here and the warper options that
:func:`specsampler.sample` and :func:`specsampler.verify` apply (one cut, one tie rule for p and q). The draft's
scores get the same processors before a draft is drawn from them, so q stays the distribution each draft was drawn
from and the output follows the processed target distribution exactly; greedy rows take the argmax of the processed
scores, as ``model.generate`` does.

A processor is called on a subset of the batch's rows (those whose prefixes have the same length), so it must treat
rows independently. The processors of transformers that hold per-row state are given that state for the subset
(RepetitionPenalty's per-row prompt padding, EncoderRepetitionPenalty's and EncoderNoRepeatNGram's prompt ids,
PrefixConstrained's row index). Those that cannot be applied this way raise a ValueError naming them: warpers that
act after min-p (typical, epsilon, eta, top-h), classifier-free guidance (it runs the model itself, step by step),
watermarking, and any processor placed after a warper.
"""

from __future__ import annotations

import copy

import torch

from .kv_cache import input_device
from .options import PROCESSOR_OPTIONS, warper_values

__all__ = ["PrefixProcessors", "build_processors", "split_processors"]

#: Processors ``model.generate`` may prepare that cannot be applied position by position here: class name -> why.
UNSUPPORTED = {
    "TypicalLogitsWarper": "typical_p (a warper after min-p; specsampler applies temperature, top-k, top-p, min-p)",
    "EpsilonLogitsWarper": "epsilon_cutoff (a warper after min-p; specsampler applies temperature, top-k, top-p, "
                           "min-p)",
    "EtaLogitsWarper": "eta_cutoff (a warper after min-p; specsampler applies temperature, top-k, top-p, min-p)",
    "TopHLogitsWarper": "top_h (a warper; specsampler applies temperature, top-k, top-p, min-p)",
    "UnbatchedClassifierFreeGuidanceLogitsProcessor": "guidance_scale (classifier-free guidance runs the model on "
                                                      "its own cache token by token)",
    "ClassifierFreeGuidanceLogitsProcessor": "guidance_scale (classifier-free guidance needs a doubled batch)",
    "WatermarkLogitsProcessor": "watermarking_config (watermarking is not applied)",
    "SynthIDTextWatermarkLogitsProcessor": "watermarking_config (watermarking is not applied)",
    "AlternatingCodebooksLogitsProcessor": "an audio-model processor (it counts steps)",
    "BarkEosPrioritizerLogitsProcessor": "an audio-model processor",
    "WhisperTimeStampLogitsProcessor": "an encoder-decoder processor",
    "WhisperNoSpeechDetection": "an encoder-decoder processor",
}


def split_processors(logits_processor) -> tuple[list, dict]:
    """Split a ``LogitsProcessorList`` prepared by ``model.generate`` into processors and warper options.

    Parameters
    ----------
    logits_processor : iterable of LogitsProcessor, or None
        In ``model.generate``'s order: processors (repetition penalty, ..., the caller's own), then warpers.

    Returns
    -------
    processors : list
        What :class:`PrefixProcessors` applies, in order.
    warp : dict
        ``temperature`` / ``top_k`` / ``top_p`` / ``min_p`` read from the warpers (absent: off).

    Raises
    ------
    ValueError
        Naming a processor that cannot be applied exactly (see the module's docstring), or one placed after a warper.
    """
    from transformers.generation.logits_process import LogitNormalization

    processors, warp = [], {}
    for proc in logits_processor or []:
        name = type(proc).__name__
        if name in UNSUPPORTED:
            raise ValueError(f"specsampler cannot apply {name}: {UNSUPPORTED[name]}")
        options = warper_values(proc)
        if options is not None:
            warp |= options
        elif isinstance(proc, LogitNormalization) and warp:
            continue  # renormalize_logits after the warpers: a log-softmax changes neither softmax nor argmax
        elif warp:
            raise ValueError(f"specsampler cannot apply {name} after the warpers {sorted(warp)}: it applies "
                             f"temperature, top-k, top-p and min-p last, inside verify")
        else:
            processors.append(proc)
    return processors, warp


def _for_rows(proc, rows: torch.Tensor, batch: int):
    """`proc` for a call on the rows `rows` [n] (indices into the batch of `batch` rows it was built for, on the
    scores' device): the processors of transformers that keep per-row state get that state for these rows, on that
    device; others are returned as is."""
    from transformers.generation import logits_process as lp

    if isinstance(proc, lp.RepetitionPenaltyLogitsProcessor) and isinstance(
            getattr(proc, "prompt_ignore_length", None), torch.Tensor):
        proc = copy.copy(proc)
        proc.prompt_ignore_length = proc.prompt_ignore_length.to(rows.device)[rows]
    elif isinstance(proc, lp.EncoderRepetitionPenaltyLogitsProcessor):
        ids = proc.encoder_input_ids.to(rows.device)
        proc = copy.copy(proc)
        proc.encoder_input_ids = ids.repeat_interleave(batch // ids.shape[0], dim=0)[rows]
    elif isinstance(proc, lp.EncoderNoRepeatNGramLogitsProcessor):
        per = batch // proc.batch_size
        proc = copy.copy(proc)
        proc.generated_ngrams = [proc.generated_ngrams[int(r) // per] for r in rows.tolist()]
        proc.batch_size = len(proc.generated_ngrams)
    elif isinstance(proc, lp.PrefixConstrainedLogitsProcessor):
        fn, per, ids = proc._prefix_allowed_tokens_fn, proc._num_beams, rows.tolist()
        proc = copy.copy(proc)
        proc._num_beams = 1
        proc._prefix_allowed_tokens_fn = lambda b, sent: fn(ids[b] // per, sent)
    return proc


class PrefixProcessors:
    """A list of logits processors applied at every scored position with the prefix it continues.

    Holds each row's sequence (the prompt as given, left padding kept, then its new tokens) on the scores' device;
    :meth:`start_step` brings it up to date once per step, then any number of calls process scores.

    Parameters
    ----------
    processors : list of LogitsProcessor
        Applied in order, as ``scores = proc(input_ids, scores)``.
    input_ids : torch.Tensor
        [B, P] int64 the prompts (left padded), the rows the processors were built for.
    capacity : int
        The longest prefix any call will see: P + max_new_tokens + the longest draft.
    device : torch.device
        Where the scores live.
    """

    def __init__(self, processors: list, input_ids: torch.Tensor, capacity: int, device: torch.device):
        self.processors = list(processors)
        self.batch, width = input_ids.shape
        self.seq = torch.zeros(self.batch, capacity, dtype=torch.long, device=device)
        self.seq[:, :width] = input_ids.to(device)
        self.written = [width] * self.batch  # tokens of row r in `seq`
        self.width = width
        self.rows: list[int] = []
        self.rows_t = torch.zeros(0, dtype=torch.long, device=device)

    def start_step(self, rows: list[int], new: list[list[int]]) -> None:
        """The running rows `rows` (indices into the batch) for the next calls, and every row's new tokens `new`
        (B lists): tokens not yet in the device copy are written, in one transfer."""
        r_idx, c_idx, vals = [], [], []
        for r in rows:
            have = self.written[r] - self.width
            for j, t in enumerate(new[r][have:]):
                r_idx.append(r)
                c_idx.append(self.written[r] + j)
                vals.append(t)
            self.written[r] = self.width + len(new[r])
        if vals:
            dev = self.seq.device
            self.seq[torch.tensor(r_idx, device=dev), torch.tensor(c_idx, device=dev)] = torch.tensor(vals, device=dev)
        if rows != self.rows:
            self.rows = list(rows)
            self.rows_t = torch.tensor(rows, dtype=torch.long, device=self.seq.device)

    def __call__(self, scores: torch.Tensor, drafts: torch.Tensor | None, first: int = 0,
                 counts: list[int] | None = None) -> torch.Tensor:
        """Process the scores of positions that continue each running row by some of its drafts.

        Parameters
        ----------
        scores : torch.Tensor
            [B', S, V] float scores of the B' running rows (in :meth:`start_step`'s order); position s of row i
            continues row i's sequence and drafts[i, :first + s].
        drafts : torch.Tensor or None
            [B', T] int64 the drafts, T >= first + S - 1 (None when first + S - 1 = 0).
        first : int
            The drafts before position 0.
        counts : list of int, optional
            B': positions past first + s > counts[i] are left as they are (nobody reads them).

        Returns
        -------
        torch.Tensor
            [B', S, V] the processed scores (`scores`, updated in place).
        """
        n_rows, n_pos, _ = scores.shape
        lengths = [self.written[r] for r in self.rows]
        longest = max(lengths) + first + n_pos - 1
        ext = self.seq[self.rows_t, :longest]
        if drafts is not None and first + n_pos > 1:
            used = first + n_pos - 1
            cols = torch.tensor(lengths, device=ext.device)[:, None] + torch.arange(used, device=ext.device)
            ext = ext.scatter(1, cols, drafts[:, :used].to(ext.device))
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for i, length in enumerate(lengths):
            for s in range(n_pos):
                if counts is not None and first + s > counts[i]:
                    break
                rows_s = groups.setdefault(length + first + s, ([], []))
                rows_s[0].append(i)
                rows_s[1].append(s)
        for length, (idx, pos) in sorted(groups.items()):
            i_t = torch.tensor(idx, device=scores.device)
            s_t = torch.tensor(pos, device=scores.device)
            prefix, x = ext[i_t.to(ext.device), :length].to(scores.device), scores[i_t, s_t]
            batch_rows = self.rows_t[i_t.to(self.rows_t.device)].to(scores.device)
            for proc in self.processors:
                x = _for_rows(proc, batch_rows, self.batch)(prefix, x)
            scores[i_t, s_t] = x.to(scores.dtype)
        return scores

    def nodes(self, scores: torch.Tensor, paths: torch.Tensor, depths: list[list[int]], counts: list[int]
              ) -> torch.Tensor:
        """Process the scores of a token tree's slots, each with its own path (rows' paths differ in depth).

        Parameters
        ----------
        scores : torch.Tensor
            [B', S, V] float scores: slot s of row i continues row i's sequence and ``paths[i, s, :depths[i][s]]``.
        paths : torch.Tensor
            [B', S, D] int64 each slot's path tokens below the root (:func:`.tree_loop.node_paths`).
        depths : list of list of int
            B' x S path lengths.
        counts : list of int
            B': slots past counts[i] (row i's padding nodes) are left as they are.

        Returns
        -------
        torch.Tensor
            [B', S, V] the processed scores (`scores`, updated in place).
        """
        lengths = [self.written[r] for r in self.rows]
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for i, length in enumerate(lengths):
            for s in range(min(scores.shape[1], counts[i] + 1)):
                rows_s = groups.setdefault(length + depths[i][s], ([], []))
                rows_s[0].append(i)
                rows_s[1].append(s)
        width = paths.shape[2]
        ext = torch.cat([self.seq[self.rows_t, :max(lengths)], self.seq.new_zeros(len(lengths), width)], dim=1)
        starts = torch.tensor(lengths, device=ext.device)[:, None]
        for total, (idx, pos) in sorted(groups.items()):
            i_t = torch.tensor(idx, device=scores.device)
            s_t = torch.tensor(pos, device=scores.device)
            cols = starts[i_t.to(ext.device)] + torch.arange(width, device=ext.device)
            prefix = ext[i_t.to(ext.device)].scatter(1, cols, paths[i_t, s_t].to(ext.device))[:, :total]
            x = scores[i_t, s_t]
            batch_rows = self.rows_t[i_t.to(self.rows_t.device)].to(scores.device)
            for proc in self.processors:
                x = _for_rows(proc, batch_rows, self.batch)(prefix.to(scores.device), x)
            scores[i_t, s_t] = x.to(scores.dtype)
        return scores


def build_processors(target, options, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new: int,
                     eos: list[int], logits_processor=None, prefix_allowed_tokens_fn=None) -> list:
    """The processors ``model.generate`` would build for these options and [B, P] prompts (repeated for
    num_return_sequences already), warpers excluded: transformers' own ``_get_logits_processor`` on a config with the
    resolved values, ``max_length`` = P + `max_new` and ``min_length`` from ``min_new_tokens`` as transformers sets
    them; the caller's `logits_processor` list and `prefix_allowed_tokens_fn` where it puts them."""
    from transformers import GenerationConfig, LogitsProcessorList

    values = {name: options[name][0] for name in PROCESSOR_OPTIONS if options[name][0] is not None}
    if not values and not logits_processor and prefix_allowed_tokens_fn is None:
        return []
    prompt = input_ids.shape[1]
    n_seq = options["num_return_sequences"][0] or 1
    cfg = GenerationConfig(**values, max_length=prompt + max_new, num_beams=1)
    cfg.num_return_sequences = n_seq  # (PrefixConstrained's rows per prompt; set after the greedy-only validation)
    if cfg.min_new_tokens is not None:
        cfg.min_length = cfg.min_new_tokens + prompt
    device = input_device(target)
    cfg._eos_token_tensor = torch.tensor(eos, device=device) if eos else None
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    procs = target._get_logits_processor(
        generation_config=cfg, input_ids_seq_length=prompt, encoder_input_ids=input_ids.to(device),
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, logits_processor=LogitsProcessorList(logits_processor or []),
        device=device, model_kwargs={"attention_mask": mask.to(device)})
    processors, warp = split_processors(procs)
    if warp:
        raise ValueError(f"logits_processor holds warpers ({sorted(warp)}): pass temperature=, top_k=, top_p=, "
                         f"min_p= instead (specsampler applies them inside verify)")
    return processors
