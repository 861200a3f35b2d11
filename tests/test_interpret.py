"""specsampler._interpret: Triton's interpreter without its redundant re-patching gives the same bits.

Both runs are subprocesses with TRITON_INTERPRET=1 on CPU tensors (the interpreter's own device), on any machine:
token, block and tree verification with warpers and log-probabilities, one run with the shortcut and one without.
"""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys
import torch
from specsampler import _interpret
installed = _interpret.skip_repatching()
import specsampler
from util import make_case
import triton
out = {"installed": installed, "triton": triton.__version__}
for method in ("token", "block"):
    case = {k: v for k, v in make_case(5, 3, 300, seed=4, temperature="mixed").items() if not k.startswith("_")}
    res = specsampler.verify(**case, seed=11, backend="triton", method=method, top_k=40, top_p=0.9,
                             return_logprobs=True)
    out[method] = [res.tokens.tolist(), res.num_accepted.tolist(), res.logprobs.tolist()]
g = torch.Generator().manual_seed(2)
target, draft = torch.randn(3, 5, 50, generator=g), torch.randn(3, 5, 50, generator=g)
parents = torch.tensor([[-1, -1, 0, 2]] * 3)
tokens = torch.randint(0, 50, (3, 4), generator=g)
res = specsampler.verify_tree(target, tokens, parents, draft, seed=3, backend="triton")
out["tree"] = [res.tokens.tolist(), res.num_accepted.tolist()]
print(json.dumps(out))
"""


def _run(repatch: bool) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))  # (and Triton 3.6's folder where given)
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=path,
               SPECSAMPLER_INTERPRETER_REPATCH="1" if repatch else "0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_skipping_repatching_changes_no_bit():
    fast, slow = _run(repatch=False), _run(repatch=True)
    assert fast.pop("installed") is True and slow.pop("installed") is False
    assert fast["triton"] == slow["triton"] == __import__("triton").__version__
    assert fast == slow
    assert any(n > 0 for n in fast["block"][1])  # drafts accepted somewhere: the comparison covers the paths
