"""Batched speculative generation for HuggingFace causal LMs: :func:`specsampler.generate`.

Read in this order:

- :mod:`.api`: :func:`generate`, the entry point: options resolved, processors and stopping criteria built, the loop.
- :mod:`.settings`: the one resolver every entry point uses (``generate``, the patched ``model.generate``,
  ``speculative_generate``, the CLI): argument, then ``generation_config=``, then the model's config, then
  transformers' defaults; range checks and refusals by name. :mod:`.options` is its table of transformers' options.
- :mod:`.loop`: prefill, the drafter started (:func:`.drafters.start_drafter`), the step built once
  (:func:`.loop.make_step`: :class:`.loop.ChainStep`, draft, score, verify, trim the caches), commit, evict.
- :mod:`.protocol`: what a step and a drafter exchange: proposals, the target's step (scores, hidden states), the
  chain and tree drafter protocols, :class:`.protocol.DrafterSource` (``draft=`` objects of one's own).
- :mod:`.tree_loop`: :class:`.tree_loop.TreeStep`, a step over a token tree (``draft_tree``,
  ``prompt_lookup_num_candidates``), the same :class:`~.protocol.Step` out; :mod:`.trees`: its pieces
  (tree_inputs, path_keep, accept_tree, lookup_candidates); :mod:`.tree_expand`: a draft model growing a tree.
- :mod:`.kv_cache`: the KV cache with holes (rows accept different numbers of drafts), token trees through it
  (``forward_tree``, ``keep_path``, ``check_tree_attention``).
- :mod:`.drafters`: the one drafter factory, the draft model, prompt lookup; :mod:`.tree_drafters`: their tree
  counterparts.
- :mod:`.schedules`: draft lengths per step: constant, heuristic, cost (with the process's measurements).
- :mod:`.processors`, :mod:`.stopping`: transformers' logits processors at every scored position, stopping criteria.
- :mod:`.outputs`: ``output_scores`` / ``output_logits``, each kept token's scores and logits as transformers returns
  them (recorded only when asked for).
"""

from .api import generate
from .drafters import PromptLookupDrafter
from .loop import GenerateOutput, GenerationStats

__all__ = ["GenerateOutput", "GenerationStats", "PromptLookupDrafter", "generate"]
