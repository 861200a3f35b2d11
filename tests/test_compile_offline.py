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

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import compile_offline  # noqa: E402


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    """compile_offline.py --arch 90 once for this file's tests: (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))  # compile for real, not from a cache
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compile_offline.py"), "--arch", "90"], env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def _tables(out):
    """(rows of the variant table, rows of the loop table), split into fields."""
    rows = [line.split() for line in out.splitlines() if line.startswith("sm_90")]
    return [row for row in rows if len(row) == 13], [row for row in rows if len(row) == 17]


def test_kernels_compile_for_sm90_without_spills(sm90):
    returncode, out, err = sm90
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    # exit status 1 only for barriers in vocabulary loops (test_no_barrier_in_a_vocabulary_loop's business)
    assert returncode == (1 if failures else 0), out + err
    assert all("in a vocabulary loop" in line for line in failures), out + err
    assert failures or "all variants compiled, no spills in loops" in out
    rows, _ = _tables(out)
    compiled = {(row[1], row[4]) for row in rows}
    for name, _, _, opt in compile_offline.CONFIGS:
        assert (name, "_verify_kernel") in compiled, out
        if not opt.get("probs"):  # from probabilities there is no statistics launch
            assert (name, "_row_stats_kernel") in compiled, out
        if opt.get("warp"):  # the warpers' cut search, between the two
            assert (name, "_warp_cut_kernel") in compiled, out
    # registers counted; no local arrays; no spill inside a loop (one register saved across the kernel may happen)
    assert all(int(row[6]) > 0 and row[8] == "0" and row[10] == "0" for row in rows), out
    # Launch 1 reads whole tiles of aligned rows (V = 32000 or 262144) in vectors; rows of V = 8193 cannot be.
    stats_vector_loads = {row[1]: int(row[12]) for row in rows if row[4] == "_row_stats_kernel"}
    assert stats_vector_loads.pop("unaligned-V") == 0, out
    assert all(count > 0 for count in stats_vector_loads.values()), out


def test_loop_table_finds_the_vocabulary_loops(sm90):
    """Every variant has vocabulary loops with per-element figures, one at least loading scores (or noise); launch 1
    draws no random numbers, nor does the warpers' cut search, and launch 2's race draws them from Philox unless the
    test hook gives the noise."""
    _, out, err = sm90
    variants, loops = _tables(out)
    assert loops, out + err
    given = {name for name, _, _, opt in compile_offline.CONFIGS if opt.get("given")}
    for variant in variants:
        config, kernel, warps = variant[1], variant[4], variant[5]
        vocab = [row for row in loops if row[1:3] == [config, kernel] and row[4] == "vocab"]
        assert vocab, f"{config} {kernel}: no vocabulary loop\n{out}"
        for row in vocab:
            assert row[6] == warps and int(row[7]) >= 32 * int(warps), row
            assert int(row[8]) > 0 and float(row[9]) > 0, row  # instrs, /elem
        assert any(int(row[13]) > 0 for row in vocab), vocab  # LDG (a fallback race over ids alone loads nothing)
        philox_per_elem = [float(row[16]) for row in vocab]
        if kernel in ("_row_stats_kernel", "_warp_cut_kernel") or config in given:
            assert not any(philox_per_elem), vocab
        else:
            assert any(philox_per_elem), vocab
    assert all(row[4] in ("vocab", "outer", "other") for row in loops), out  # every loop found in the source


def test_block_and_logprobs_variants_compile(sm90):
    """Block verification and the log-probabilities compile for sm_90 with no spill inside a loop (ptxas may keep a
    bf16 block variant at 128 registers, two CTAs of 256 threads per SM, with a few local loads and stores outside
    the loops: bench/results/compile_offline_block_triton*.txt), and the block kernel has the token kernel's three
    vocabulary loops (the race, and the fallback races over p and uniform)."""
    _, out, err = sm90
    rows, loops = _tables(out)
    new = [row for row in rows if row[1].startswith(("block", "logprobs"))]
    assert {row[1] for row in new} == {name for name, *_ in compile_offline.CONFIGS
                                       if name.startswith(("block", "logprobs"))}, out
    assert all(row[10] == "0" and row[8] == "0" for row in new), out  # spills in loops, local arrays
    verify_loops = {row[1]: [r for r in loops if r[1] == row[1] and r[2] == "_verify_kernel" and r[4] == "vocab"]
                    for row in rows if row[4] == "_verify_kernel"}
    assert len(verify_loops["block"]) == len(verify_loops["sampled-pdl"]), out


def test_no_barrier_in_a_vocabulary_loop(sm90):
    """A CTA barrier (BAR.*) inside a loop that walks a row in BLOCK_V tiles is a block reduction per tile: the
    kernels keep per-lane accumulators and reduce across the CTA once, after the loop (issue 10).

    Expected to fail on the kernel of a1b0f32 (7 barriers per tile in launch 1's loops, 19 to 26 in launch 2's race:
    bench/results/compile_offline_before_triton3.*.txt)."""
    returncode, out, err = sm90
    _, loops = _tables(out)
    with_barriers = [" ".join(row) for row in loops if row[4] == "vocab" and int(row[10]) > 0]
    assert not with_barriers, "\n".join(with_barriers)
    assert returncode == 0, out + err
    assert "no barrier in a vocabulary loop" in out


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
        /*0060*/               @P1 BRA 0x90 ;                            /* 0x0000000000001947 */
        /*0070*/                   EXIT ;                                /* 0x000000000000794d */
        /*0080*/                   BRA 0x80;                             /* 0xfffffffc00007947 */
        /*0090*/                   LDL.LU R4, [R1] ;                     /* 0x0000000001047983 */
        /*00a0*/                   BRA 0x20 ;                            /* 0xfffffffc00007947 */
"""


def test_count_spills_tells_loops_from_jumps_back():
    """A back edge makes a loop; the jump back from out-of-line code (after the EXIT) and the trap loop do not."""
    assert compile_offline.count_spills(SASS) == (3, 1)
    assert compile_offline.sass_loops(compile_offline.sass_instructions(SASS)) == [(0x30, 0x50)]


# sm_80 style: the exit test at the top, an unconditional branch back, a call to the next instruction, a nested loop
# with two back edges; then out-of-line code after the EXIT that jumps back, and a subroutine.
SASS_SM80 = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;
        /*0020*/               @P0 BRA 0xa0 ;
        /*0030*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0040*/                   STL [R1], R2 ;
        /*0050*/               @P1 BRA 0x30 ;
        /*0060*/               @P2 BRA 0x40 ;
        /*0070*/              @!P3 BRA 0x30 ;
        /*0080*/               @P0 CALL.REL.NOINC 0x90 ;
        /*0090*/                   BRA 0x10 ;
        /*00a0*/                   BRA.DIV UR4, 0xd0 ;
        /*00b0*/                   EXIT ;
        /*00c0*/                   BRA 0xc0;
        /*00d0*/                   SHFL.BFLY PT, R3, R2, 0x1, 0x1f ;
        /*00e0*/                   BRA 0xb0 ;
        /*00f0*/                   LDL R2, [R1] ;
        /*0100*/                   RET.REL.NODEC R4 0x0 ;
        /*0110*/                   BRA 0x30 ;
"""


def test_sass_loops_take_unconditional_back_edges_and_merge_back_edges_to_one_target():
    instrs = compile_offline.sass_instructions(SASS_SM80)
    assert instrs[3] == (0x30, "LDG.E R2, desc[UR4][R4.64]")
    assert compile_offline.sass_loops(instrs) == [(0x10, 0x90), (0x30, 0x70), (0x40, 0x60)]
    assert compile_offline.count_spills(SASS_SM80) == (2, 1)


# One loop of each kind of instruction the loop table counts, and the forms a Philox round takes in ptxas's output.
SASS_LOOP = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   LDG.E.128 R4, desc[UR8][R14.64] ;
        /*0020*/              @!P0 LDG.E R7, desc[UR8][R2.64+0x4] ;
        /*0030*/                   LDGSTS.E.BYPASS.128 [R9], desc[UR8][R2.64] ;
        /*0040*/                   LDGDEPBAR ;
        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0060*/               @P1 BAR.RED.POPC RZ, 0x0, P0 ;
        /*0070*/                   BAR.ARV 0x1, 0x40 ;
        /*0080*/                   BSYNC B0 ;
        /*0090*/                   MEMBAR.ALL.GPU ;
        /*00a0*/                   SHFL.BFLY PT, R47, R46, 0x10, 0x1f ;
        /*00b0*/                   WARPSYNC 0xffffffff ;
        /*00c0*/                   WARPSYNC.ALL ;
        /*00d0*/                   MUFU.EX2 R6, R51 ;
        /*00e0*/                   MUFU.LG2 R6, R6 ;
        /*00f0*/                   MUFU.RCP R7, R7 ;
        /*0100*/                   FMUL R6, R6, 0.69314718246459960938 ;
        /*0110*/                   IMAD.HI.U32 R68, R68, -0x326172a9, RZ ;
        /*0120*/                   IMAD R11, R9, -0x326172a9, RZ ;
        /*0130*/                   IMAD.HI.U32 R9, R8, -0x2daee0ad, RZ ;
        /*0140*/                   IMAD R8, R8, -0x2daee0ad, RZ ;
        /*0150*/                   IMAD.WIDE.U32 R4, R2.reuse, -0x2daee0ad, RZ ;
        /*0160*/                   IMAD R7, R28, 0x2daee0ad, RZ ;
        /*0170*/                   UIMAD.WIDE.U32 UR4, UR6, -0x326172a9, URZ ;
        /*0180*/                   IMAD.HI.U32 R3, R3, 0xcd9e8d57, RZ ;
        /*0190*/                   IMAD.HI.U32 R3, R3, 0x2daee0ad, RZ ;
        /*01a0*/                   IMAD.WIDE R3, R3, -0x2daee0ad, RZ ;
        /*01b0*/                   NOP ;
        /*01c0*/               @P0 BRA 0x10 ;
        /*01d0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*01e0*/                   EXIT ;
"""


def test_loop_counts_barriers_warp_ops_loads_mufu_and_philox_rounds():
    instrs = compile_offline.sass_instructions(SASS_LOOP)
    assert compile_offline.sass_loops(instrs) == [(0x10, 0x1c0)]
    counts = compile_offline.loop_counts(instrs, 0x10, 0x1c0)
    # BAR.SYNC/RED/ARV, not BSYNC (warp convergence) nor MEMBAR (a fence); the BAR after the loop is outside
    assert counts["barriers"] == 3
    assert (counts["shfl"], counts["warpsync"], counts["ldg"], counts["mufu"]) == (1, 2, 3, 3)
    # hi halves by 0xCD9E8D57 or 0xD2511F53, signed or not (0x110, 0x130, 0x150, 0x170, 0x180): 5 multiplies;
    # not the lo halves (IMAD, also by the negated constant), a hi by another constant, nor a signed IMAD.WIDE
    assert counts["philox"] == 2.5
    assert counts["instrs"] == 28 - 1  # 0x10..0x1c0, the NOP left out


def test_is_philox_multiply():
    assert compile_offline.is_philox_multiply("@P2 IMAD.HI.U32 R68, R68, -0x326172a9, RZ")
    assert compile_offline.is_philox_multiply("IMAD.WIDE.U32 R4, P0, R2, -0x2daee0ad, RZ")
    assert not compile_offline.is_philox_multiply("IMAD R4, R2, -0x2daee0ad, RZ")
    assert not compile_offline.is_philox_multiply("IMAD.HI.U32 R4, R2, 0x9e3779b9, RZ")


NVDISASM = """
        .global         _verify_kernel
_verify_kernel:
	//## File "/src/verify.py", line 7
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
	//## File "/lib/random.py", line 36
        /*0020*/                   IMAD.HI.U32 R68, R68, -0x326172a9, RZ ;
	//## File "/src/verify.py", line 12
        /*0030*/               @P0 BRA `(.L_x_1) ;
.L_x_1:
        /*0040*/                   EXIT ;
"""


def test_line_info_names_each_instruction():
    assert compile_offline.line_info(NVDISASM) == {0x0: ("/src/verify.py", 7), 0x10: ("/src/verify.py", 7),
                                                    0x20: ("/lib/random.py", 36), 0x30: ("/src/verify.py", 12),
                                                    0x40: ("/src/verify.py", 12)}
    # a cubin from Triton's cache names the file it was compiled from, which may be gone: found by its name
    remapped = compile_offline.line_info(NVDISASM, {"verify.py": "/work/verify.py"})
    assert remapped[0x30] == ("/work/verify.py", 12) and remapped[0x20] == ("/lib/random.py", 36)


KERNEL_SOURCE = """\
def kernel(K, lo, hi, BLOCK_V, BLOCK_K):
    for t0 in range(0, K + 1, BLOCK_K):
        x = t0 + 1
    for row in range(0, 4):
        base = row * hi
        for start in range(lo, hi, BLOCK_V):
            y = start
            z = y
    for tile in range(lo, hi):
        offs = tile * BLOCK_V
"""

# Loops at 0x10-0x40 (line 2: over K), 0x60-0x100 (line 4: rows, holds 0x80-0xc0, line 6: tiles) and 0x120-0x140
# (line 9: tiles, its back edge on line 10).
SASS_KINDS = "\n".join(f"        /*{addr:04x}*/                   {instr} ;" for addr, instr in [
    (0x00, "S2R R0, SR_TID.X"), (0x10, "LDG.E R2, desc[UR4][R4.64]"), (0x40, "@P0 BRA 0x10"),
    (0x60, "IADD3 R1, R1, 0x1, RZ"), (0x80, "LDG.E R2, desc[UR4][R4.64]"), (0xc0, "@P0 BRA 0x80"),
    (0x100, "@P1 BRA 0x60"), (0x120, "LDG.E.128 R4, desc[UR4][R4.64]"), (0x140, "@!P2 BRA 0x120"),
    (0x150, "EXIT")])


def test_loop_table_tells_vocabulary_loops_by_their_source(tmp_path):
    source = tmp_path / "kernel.py"
    source.write_text(KERNEL_SOURCE)
    path = str(source)
    lines = {0x40: (path, 2), 0xc0: (path, 6), 0x100: (path, 4), 0x140: (path, 10)}
    rows = compile_offline.loop_table(SASS_KINDS, lines, block_v=512, num_warps=4)
    assert [(row["lo"], row["hi"], row["kind"], row["source"]) for row in rows] == [
        (0x10, 0x40, "other", "kernel.py:2"), (0x60, 0x100, "outer", "kernel.py:4"),
        (0x80, 0xc0, "vocab", "kernel.py:6"), (0x120, 0x140, "vocab", "kernel.py:9")]
    assert [row["elems"] for row in rows] == [None, None, 4.0, 4.0]  # 512 / (32 * 4) per thread
    assert rows[3]["instrs"] == 2 and rows[3]["instrs_per_elem"] == 0.5 and rows[3]["philox_per_elem"] == 0.0
    # a loop nested in a loop of the same statement (two back edges to different targets) is no outer loop
    same = {**lines, 0x100: (path, 6)}
    assert [row["kind"] for row in compile_offline.loop_table(SASS_KINDS, same, 512, 4)][1:3] == ["vocab", "vocab"]
    # without line info (or with a source that is gone) a loop cannot be told: kind '?'
    assert {row["kind"] for row in compile_offline.loop_table(SASS_KINDS, {}, 512, 4)} == {"?"}
    gone = {addr: (str(tmp_path / "gone.py"), line) for addr, (_, line) in lines.items()}
    assert {row["kind"] for row in compile_offline.loop_table(SASS_KINDS, gone, 512, 4)} == {"?"}
