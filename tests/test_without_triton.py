"""Where triton is not installed (no wheels off Linux), the package imports and runs the torch backend, and asking
for the kernel says why it cannot run."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib.abc, sys

class NoTriton(importlib.abc.MetaPathFinder):  # as if triton were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoTriton())
import torch, specsampler
from specsampler._validation import triton_available
assert not triton_available()
target = torch.randn(3, 3, 50)
drafts = target[:, :2].argmax(-1)
res = specsampler.verify(target, drafts, seed=1)  # auto: the torch backend
assert res.tokens.shape == (3, 3)
try:
    specsampler.verify(target, drafts, seed=1, backend="triton")
except ValueError as err:
    print("refused:", err)
from specsampler.cli import backend_choice
print("auto:", backend_choice(torch.device("cpu"))[1])
"""


def test_torch_backend_runs_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "refused: backend='triton' needs the triton package, which is not installed" in proc.stdout
    assert "auto: the torch backend (tensors on cpu; the triton package is not installed" in proc.stdout
