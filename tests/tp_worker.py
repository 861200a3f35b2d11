"""One rank of tests/test_tensor_parallel.py: ``torchrun --nproc_per_node 2 tests/tp_worker.py OUT_DIR MODE``.

Every rank builds the same tiny Llama target and 1-layer draft (fixed torch seed). MODE "tensor_parallel": rank 0
saves the target to OUT_DIR/target and every rank loads it back with transformers' tensor parallelism
(``tp_plan="auto"``, gloo, CPU; needs accelerate); "replicated": each rank keeps its whole copy (no collective in the
model; the seed broadcast alone). Each rank writes what it generated to OUT_DIR/rank{R}.json: plain ``generate``
(greedy, row by row), ``specsampler.generate`` greedy, sampled with a seed and sampled with seed=None (also with the
"cost" schedule, each rank timing its own steps), and ``speculative_generate`` sampled with seed=None.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import json
import os
import pathlib
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, LlamaConfig

import specsampler

CONFIG = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              eos_token_id=None, bos_token_id=None, pad_token_id=0)


def _load_tensor_parallel(path):
    """The model at `path`, sharded over the default group with its predefined plan ("auto")."""
    from transformers import distributed

    config = getattr(distributed, "DistributedConfig", None)
    if config is not None and "tp_plan" in inspect.signature(config).parameters:  # transformers 5: the new spelling
        kwargs = {"distributed_config": config(tp_plan="auto")}
    else:  # 4.57
        kwargs = {"tp_plan": "auto"}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)


def main(out_dir: pathlib.Path, mode: str) -> None:
    # a short timeout: ranks that desynchronise fail the test instead of waiting 30 minutes in a collective
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same weights on every rank
    full = AutoModelForCausalLM.from_config(LlamaConfig(num_hidden_layers=2, **CONFIG))
    draft = AutoModelForCausalLM.from_config(LlamaConfig(num_hidden_layers=1, **CONFIG)).eval()
    if mode == "tensor_parallel":
        target_dir = out_dir / "target"
        if rank == 0:
            full.save_pretrained(target_dir)
        dist.barrier()
        target = _load_tensor_parallel(target_dir).eval()
    else:
        target = full.eval()
    sharded = target.model.layers[0].mlp.up_proj.weight

    input_ids = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13], [0, 3, 4, 3, 4]])  # left padded
    attention_mask = (torch.arange(5) >= torch.tensor([[2], [0], [1]])).long()
    new = 12
    out = {"rank": rank, "world_size": dist.get_world_size(), "pads": (1 - attention_mask).sum(1).tolist(),
           "sharded": bool(getattr(sharded, "placements", None)) or sharded.shape[0] < CONFIG["intermediate_size"]}

    def record(key, value):  # written after each mode: a run that dies shows which modes completed
        out[key] = value
        (out_dir / f"rank{rank}.json").write_text(json.dumps(out))

    def run(**kw):
        res = specsampler.generate(target, draft, input_ids, attention_mask, max_new_tokens=new, num_draft_tokens=3,
                                   **kw)
        return res.sequences.tolist()

    with torch.no_grad():
        record("plain_greedy", [target.generate(row[mask.bool()][None], do_sample=False, max_new_tokens=new)[0].tolist()
                                for row, mask in zip(input_ids, attention_mask, strict=True)])
    record("greedy", run())
    # The "cost" draft-length schedule: every rank measures its own times; here rank 1's say that drafting never pays
    # (K' = 0) while rank 0's real ones let it draft, so the ranks stay in step only if all follow rank 0's choice.
    expensive = contextlib.nullcontext()
    if rank == 1:
        from specsampler.generation.schedules import COSTS, Stopwatch

        class Expensive(Stopwatch):
            def spans(self):
                return [10.0, 1.0, 0.0] if super().spans() else []

        expensive = COSTS.configured(clock=Expensive)
    with expensive:
        record("cost_greedy", run(num_assistant_tokens_schedule="cost"))
        record("cost_sampled_seed", run(num_assistant_tokens_schedule="cost", do_sample=True, seed=99))
    # Each rank's own torch random state from here on, as independent processes would have: a seed drawn locally
    # then differs between ranks, and only a shared one makes them agree.
    torch.manual_seed(1000 + rank)
    record("sampled_seed", run(do_sample=True, temperature=1.0, seed=123))
    record("sampled_none", [run(do_sample=True, temperature=1.0, top_k=50) for _ in range(2)])
    record("custom_generate_none", target.generate(
        input_ids, attention_mask=attention_mask, custom_generate=specsampler.speculative_generate, draft_model=draft,
        max_new_tokens=new, do_sample=True, temperature=1.0).tolist())
    # transformers' own assisted generation draws the drafts from torch's global generator (as any sampled generate
    # under tensor parallelism): the ranks agree when seeded alike, and the patched verification follows the same rule
    torch.manual_seed(7)
    with specsampler.patched_transformers():
        record("patched_same_torch_seed", target.generate(input_ids[1:2], assistant_model=draft, do_sample=True,
                                                          max_new_tokens=new).tolist())
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(pathlib.Path(sys.argv[1]), sys.argv[2])
