"""The kernels compile for an H100 (sm_90) on this GPU-less machine, in every configuration, without spills in loops.

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
    assert "all variants compiled, no spills in loops" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("sm_90")]
    compiled = {(row[1], row[4]) for row in rows}
    for name, *_ in compile_offline.CONFIGS:
        assert (name, "_verify_kernel") in compiled, out
        if not name.startswith("probs"):  # from probabilities there is no statistics launch
            assert (name, "_row_stats_kernel") in compiled, out
    # registers counted; no local arrays; no spill inside a loop (one register saved across the kernel may happen)
    assert all(int(row[6]) > 0 and row[8] == "0" and row[10] == "0" for row in rows), out
    # Launch 1 reads whole tiles of aligned rows (V = 32000 or 262144) in vectors; rows of V = 8193 cannot be.
    stats_vector_loads = {row[1]: int(row[12]) for row in rows if row[4] == "_row_stats_kernel"}
    assert stats_vector_loads.pop("unaligned-V") == 0, out
    assert all(count > 0 for count in stats_vector_loads.values()), out


def test_compile_offline_refuses_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert compile_offline.main(["--arch", "90"]) == 2
    assert "TRITON_INTERPRET" in capsys.readouterr().err


SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                /* 0x00000a00ff017b82 */
        /*0010*/                   STL [R1], R5 ;                        /* 0x0000000501007387 */
        /*0020*/                   MOV R2, R5 ;                          /* 0x0000000500027202 */
        /*0030*/                   LDL R3, [R1] ;                        /* 0x0000000001037983 */
        /*0040*/                   IADD3 R2, R2, 0x1, RZ ;               /* 0x0000000102027810 */
        /*0050*/               @!P0 BRA 0x30 ;                           /* 0xfffffffc00008947 */
        /*0060*/                   LDL.LU R4, [R1] ;                     /* 0x0000000001047983 */
        /*0070*/                   BRA 0x20 ;                            /* 0xfffffffc00007947 */
        /*0080*/                   BRA 0x80;                             /* 0xfffffffc00007947 */
"""


def test_count_spills_tells_loops_from_jumps_back():
    """A predicated back edge makes a loop; the unconditional jump back from out-of-line code and the trap loop
    at the end do not."""
    assert compile_offline.count_spills(SASS) == (3, 1)
