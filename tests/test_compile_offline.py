"""The kernels compile for an H100 (sm_90) on this GPU-less machine, in every configuration, without register spills.

bench/compile_offline.py runs Triton's whole compiler (front end, LLVM, ptxas from the triton wheel) through the real
launchers with every launch turned into a compilation, then reads registers and spills from each cubin. It needs a
process without TRITON_INTERPRET=1 (which conftest sets here), so it runs in a subprocess. `make test` runs this file
with the newest Triton and again with Triton 3.6.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import compile_offline  # noqa: E402


def test_kernels_compile_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compile_offline.py"), "--arch", "90"], env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "all variants compiled, no spills" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("sm_90")]
    compiled = {(row[1], row[4]) for row in rows}
    for name, *_ in compile_offline.CONFIGS:
        assert (name, "_verify_kernel") in compiled, out
        if not name.startswith("probs"):  # from probabilities there is no statistics launch
            assert (name, "_row_stats_kernel") in compiled, out
    assert all(int(row[6]) > 0 and row[7] == "0" and row[8] == "0" for row in rows), out  # registers; no stack, local


def test_compile_offline_refuses_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert compile_offline.main(["--arch", "90"]) == 2
    assert "TRITON_INTERPRET" in capsys.readouterr().err
