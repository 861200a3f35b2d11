"""Compile specsampler's kernels for an NVIDIA GPU on a machine without one, and report registers, spills and loops.

Triton's whole pipeline runs on the host: front end, MLIR passes, LLVM to PTX, and ptxas (shipped in the triton
wheel) to a cubin. Only loading and launching need a GPU. This script stands in an offline "driver" that names the
target (sm_80, sm_90, ...) and turns every launch into a warm-up (compile, do not run), then calls the real launchers
(`row_stats`, `verify_rows`) over a matrix of configurations, so each variant is specialised exactly as a launch on a
GPU would specialise it (the GPU tile widths and warps, dtypes, flags, 16-byte alignment of pointers and strides).
`cuobjdump` (also in the wheel) then reads each cubin's registers, stack and local memory, and its SASS: spills are
its local loads and stores (LDL/STL), counted in all and inside loops (the vocabulary loops, where they would cost
per tile; one register saved across the kernel costs a few instructions per program). `vecload` counts the PTX's
vector loads (ld.global.v2/v4): launch 1 reads whole tiles of 16-byte aligned rows in 128-bit vectors. The `-pdl`
configurations compile the programmatic-dependent-launch variants (sm_90 and later only): each of their kernels must
hold griddepcontrol instructions (launch 1 and the cut launch let the next start, launch 2 waits), the others none.

The second table has one row per loop of each variant's SASS. A loop is a backward branch and its target (`BRA` to
a lower address, predicated or not, with no unconditional EXIT or RET in between: out-of-line code lies after the
last EXIT, so its jumps back are no loops; back edges to one target are one loop, spanning to the last of them). The
counts are static, over the instructions in that address range (a nested loop's count in its parent's too; code out
of line, such as a slow path or a CALLed routine reached from the body, does not):
- `instrs`: SASS instructions (NOPs left out);
- `bar`: CTA barriers, every BAR.* (BAR.SYNC, BAR.RED, BAR.ARV, ...), which a reduction across warps (tl.max,
  tl.sum, tl.argmax of a tile) needs; `shfl` and `wsync` count the cheap warp-level SHFL and WARPSYNC apart;
- `LDG`: global loads (LDG, LDGSTS); `MUFU`: special-function ops (MUFU.EX2, .LG2, .RCP, ...);
- `philox`: Philox4x32 rounds. A round multiplies by 0xD2511F53 and by 0xCD9E8D57, 32x32 -> 64 bits. ptxas emits
  each multiply whose high half is used as IMAD.HI.U32 or IMAD.WIDE.U32 (UIMAD.WIDE.U32 on uniform values) with the
  constant as an immediate, -0x2daee0ad and -0x326172a9 (seen with Triton 3.6 and 3.9 for sm_80 and sm_90; neither
  ever holds them in a register), and those are counted: rounds = multiplies / 2. The low halves (IMAD, sometimes by
  the negated constant) belong to the same multiplies. What the loop does not execute is not counted: a multiply
  whose result is dead (the last round's second one when only the first output is used), loop-invariant (hoisted),
  or derived from a neighbour's (ptxas computes (c + j) * A for consecutive counters from one product).
A vocabulary loop walks a row in BLOCK_V tiles. Its loads do not tell it from the acceptance loop over K (which
gathers the split statistics, [BLOCK_K, BLOCK_S] tiles: a1b0f32's holds 32 LDG, its race 8), so the source does:
`nvdisasm -g` gives the source line of the loop's back edge, which is the `for` (or `while`) statement that made the
loop, and the loop is a vocabulary loop when that statement (its range or its body) names BLOCK_V, unless it holds
a vocabulary loop itself (kind `outer`: a loop over rows or splits). Kind `other` for the rest (the loop over K, the
loops writing a row's tokens), `?` where the line or the source is missing. Per element: each thread takes
BLOCK_V / (32 * num_warps) elements per iteration of a vocabulary loop (BLOCK_V as the launch passed it, num_warps
from the compiled kernel's metadata); `/elem` divides the loop's instructions and Philox rounds by that (a loop that
ptxas unrolled holds several iterations, and its figures per element are that many times too high).

    python bench/compile_offline.py                 # sm_80 and sm_90, every configuration
    python bench/compile_offline.py --arch 90 --quick
    python bench/compile_offline.py --arch 90 --config block --config sampled

Exit status 0 when every variant compiled with no spill inside a loop, no local arrays and no barrier inside a
vocabulary loop (a CTA barrier there is a block reduction per tile), and every loop was found in the source; 1
otherwise. It must run without TRITON_INTERPRET=1, and compiles with line info (TRITON_DISABLE_LINE_INFO is dropped).
What it cannot show: that the kernels run correctly (the tests on a GPU: bench/device_check.sh), and timings.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

# (name, dtype, V, options): options are the features a launch specialises on.
CONFIGS = [
    ("sampled", torch.float32, 32000, {}),
    ("mixed-ragged", torch.bfloat16, 32000, dict(row_temp=True, ragged=True, row_seed=True)),
    ("one-hot", torch.float16, 32000, dict(one_hot=True)),
    ("probs", torch.float32, 32000, dict(probs=True)),
    ("probs-one-hot", torch.bfloat16, 32000, dict(probs=True, one_hot=True, ragged=True)),
    ("test-hook", torch.float32, 32000, dict(given=True)),
    ("unaligned-V", torch.float32, 8193, {}),
    ("large-V", torch.bfloat16, 262144, dict(row_seed=True)),
    ("warped", torch.float32, 128256, dict(warp=(50, 0.9, float("-inf")), splits=2)),  # with launch 1's candidates
    ("warped-rows", torch.bfloat16, 32000, dict(warp="rows", row_temp=True, ragged=True)),
    ("many-K", torch.bfloat16, 32000, dict(k=9, ragged=True)),  # K + 1 > BLOCK_K: launch 2's loop over positions
    ("sampled-pdl", torch.bfloat16, 128256, dict(pdl=True)),  # programmatic dependent launch (sm_90+ only)
    ("warped-pdl", torch.float32, 128256, dict(warp=(50, 0.9, float("-inf")), splits=2, pdl=True)),
    # block verification (method="block") and the emitted tokens' log-probabilities (return_logprobs=True)
    ("block", torch.bfloat16, 128256, dict(block=True)),
    ("block-mixed", torch.bfloat16, 32000, dict(block=True, row_temp=True, ragged=True, row_seed=True)),
    ("block-one-hot", torch.float16, 32000, dict(block=True, one_hot=True)),
    ("block-fp32", torch.float32, 32000, dict(block=True)),
    ("block-probs", torch.float32, 32000, dict(block=True, probs=True)),
    ("block-hook", torch.float32, 32000, dict(block=True, given=True)),
    ("block-warped", torch.float32, 128256, dict(block=True, warp=(50, 0.9, float("-inf")), splits=2)),
    ("block-many-K", torch.bfloat16, 32000, dict(block=True, k=9, ragged=True)),  # 16 positions at once
    ("block-pdl", torch.bfloat16, 128256, dict(block=True, pdl=True)),
    ("logprobs", torch.bfloat16, 128256, dict(logprobs=True, row_temp=True)),  # greedy rows summed at T = 1
    ("logprobs-probs", torch.float32, 32000, dict(logprobs=True, probs=True)),
    ("block-logprobs", torch.bfloat16, 128256, dict(block=True, logprobs=True, row_temp=True)),
]
QUICK = ("sampled", "mixed-ragged", "probs-one-hot", "unaligned-V", "warped", "sampled-pdl", "block", "logprobs")
PDL_ARCH = 90  # griddepcontrol exists from sm_90 on
PHILOX_ROUND_CONSTANTS = (0xD2511F53, 0xCD9E8D57)


class OfflineDriver:
    """What `JITFunction.run` asks of the active driver, for a GPU that is not there."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def offline(arch: int, kernels: tuple):
    """Within the block every Triton launch compiles for sm_`arch` instead of running, and is recorded: yields the list
    of (kernel name, CompiledKernel, the BLOCK_V the launch passed). `kernels`: the JIT functions whose per-device
    caches to forget before and after (they hold the target they were made for: device 0 for every arch here)."""
    import triton.runtime.jit as jit
    from triton.runtime.driver import driver

    def forget():
        for fn in kernels:
            fn.device_caches.clear()

    compiled = []
    run = jit.JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.__name__, kernel, kwargs.get("BLOCK_V")))
        return kernel

    previous = driver._active  # (reset_active() would look for a real GPU driver)
    forget()
    jit.JITFunction.run = compile_only
    driver.set_active(OfflineDriver(arch))
    try:
        yield compiled
    finally:
        jit.JITFunction.run = run
        driver._active = previous
        forget()


def compile_all(arch: int, configs: list) -> list[tuple[str, str, object, int | None]]:
    """Run the launchers for `configs` with every launch turned into a compilation for sm_`arch`.

    Returns (config name, kernel name, CompiledKernel, the BLOCK_V the launch passed) per launch.
    """
    from specsampler.triton_kernels import row_stats, verify_rows, warp_cuts

    from specsampler import triton_kernels as kernels

    results = []
    with offline(arch, (kernels._row_stats_kernel, kernels._warp_cut_kernel, kernels._verify_kernel)) as compiled:
        for name, dtype, vocab, opt in configs:
            if opt.get("pdl") and arch < PDL_ARCH:
                continue
            start = len(compiled)
            _launch(dtype, vocab, opt, row_stats, verify_rows, warp_cuts, k=opt.get("k", 4),
                    splits=opt.get("splits", 4))
            results += [(name, kernel_name, kernel, block_v) for kernel_name, kernel, block_v in compiled[start:]]
    return results


def _launch(dtype, vocab, opt, row_stats, verify_rows, warp_cuts, batch=4, k=4, splits=4):
    """One verification through the real launchers with their GPU tile widths (CPU tensors: never read)."""
    from specsampler.triton_kernels.launching import gpu_block_v

    from specsampler.torch_backend import Warp

    itemsize = torch.empty((), dtype=dtype).element_size()  # the widths a GPU picks for many rows of this dtype
    stats_block_v, race_block_v = gpu_block_v("stats", itemsize, 1 << 20, 1), gpu_block_v("race", itemsize, 1 << 20, 1)

    scores = torch.zeros(batch, k + 1, vocab, dtype=dtype)
    draft = None if opt.get("one_hot") else torch.zeros(batch, k, vocab, dtype=dtype)
    tokens = torch.zeros(batch, k, dtype=torch.int64)
    ragged = torch.full((batch,), k, dtype=torch.int64) if opt.get("ragged") else None
    temperature = torch.ones(batch) if opt.get("row_temp") else 1.0  # per-row T (0 = greedy)
    seed = torch.arange(batch, dtype=torch.int64) if opt.get("row_seed") else 7
    uniforms = torch.zeros(batch, k) if opt.get("given") else None
    noise = torch.ones(batch, vocab) if opt.get("given") else None
    out = torch.empty(batch, k + 1, dtype=torch.int64)  # as verify passes it: launch 1 sets it to -1
    # block verification and log-probabilities, as _api passes them: only when set
    options = {name: True for name in ("block", "logprobs") if opt.get(name)}
    if opt.get("probs"):
        verify_rows(scores, tokens, draft, ragged, temperature, seed, None, uniforms, noise, race_block_v, splits,
                    **options)
    else:
        pdl = bool(opt.get("pdl"))
        stats = row_stats(scores, draft, ragged, temperature, stats_block_v, splits, out,
                          candidates=bool(opt.get("warp")), pdl=pdl,
                          **({"logprobs": True} if opt.get("logprobs") else {}))
        cuts = None
        if opt.get("warp") == "rows":  # per-row warpers
            cuts = warp_cuts(scores, draft, ragged, temperature, Warp(torch.zeros(batch, dtype=torch.int64),
                                                                       torch.ones(batch), torch.zeros(batch)), stats,
                             pdl=pdl)
        elif opt.get("warp"):
            cuts = warp_cuts(scores, draft, ragged, temperature, Warp(*opt["warp"]), stats, pdl=pdl)
        verify_rows(scores, tokens, draft, ragged, temperature, seed, stats[:2], uniforms, noise, race_block_v, splits,
                    out, cuts, pdl=pdl, **options)


def _tool(name: str) -> str | None:
    """`name` from the triton wheel (cuobjdump, nvdisasm), else from PATH."""
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return bundled if os.access(bundled, os.X_OK) else shutil.which(name)


def _cuobjdump() -> str | None:
    return _tool("cuobjdump")


def inspect_cubin(cubin: bytes, tool: str, disassembler: str | None = None) -> tuple[str, str, str]:
    """(cuobjdump's resource usage, cuobjdump's SASS, nvdisasm's SASS with line info or '') of `cubin`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        lines = ""
        if disassembler:
            lines = subprocess.run([disassembler, "-g", "-c", f.name], capture_output=True, text=True).stdout
    return usage.stdout, sass, lines


def resource_usage(cubin: bytes, tool: str, usage: str | None = None, sass: str | None = None) -> dict[str, int]:
    """{'REG', 'STACK', 'SHARED', 'LOCAL', 'SPILLS', 'LOOP_SPILLS'} of the one function in `cubin` (or of its
    cuobjdump `usage` and `sass`, when given).

    SPILLS counts the local-memory loads and stores (LDL/STL) in its SASS, LOOP_SPILLS those inside a loop (between a
    backward branch and its target, see `sass_loops`; the jumps back from out-of-line code are not loops): a register
    saved once across the kernel costs a few instructions per program, one inside the vocabulary loop costs them per
    tile.
    """
    if usage is None or sass is None:
        usage, sass, _ = inspect_cubin(cubin, tool)
    line = next(ln for ln in usage.splitlines() if "REG:" in ln)
    out = {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
    out["SPILLS"], out["LOOP_SPILLS"] = count_spills(sass)
    return out


def sass_instructions(sass: str) -> list[tuple[int, str]]:
    """(address, instruction without the ';') of every instruction in cuobjdump's (or nvdisasm's) SASS."""
    return [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]


def sass_loops(instrs: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first address, address of the last back edge) of every loop, by first address.

    A back edge is a branch to a lower address, predicated (sm_90 puts the exit test at the bottom) or not (sm_80
    often exits at the top and jumps back unconditionally), with no unconditional EXIT or RET between its target and
    itself: out-of-line code (slow paths, divergent-warp paths) lies after the kernel's last EXIT and jumps back
    over it, and the trap at the end branches to itself. Back edges to one target make one loop."""
    ends: dict[int, int] = {}
    stops = [addr for addr, instr in instrs if re.match(r"(EXIT|RET)\b", instr)]  # unpredicated ones
    for addr, instr in instrs:
        branch = re.search(r"^(@!?U?P\w+\s+)?BRA\b[^;]*?(0x[0-9a-f]+)\s*$", instr)
        target = int(branch.group(2), 16) if branch else addr
        if target < addr and not any(target <= stop <= addr for stop in stops):
            ends[target] = max(ends.get(target, addr), addr)
    return sorted(ends.items())


def count_spills(sass: str) -> tuple[int, int]:
    """(local loads and stores, those inside a loop) in cuobjdump's SASS of one function."""
    instrs = sass_instructions(sass)
    loops = sass_loops(instrs)
    spills = [addr for addr, instr in instrs if re.search(r"\b(STL|LDL)\b", instr)]
    return len(spills), sum(any(lo <= a <= hi for lo, hi in loops) for a in spills)


def _opcode(instr: str) -> str:
    """The opcode of a SASS instruction, its predicate (@P0, @!UP1, ...) left out."""
    return re.sub(r"^@!?U?P\w+\s+", "", instr).split(maxsplit=1)[0] if instr else ""


def is_philox_multiply(instr: str) -> bool:
    """A 32x32 -> 64-bit multiply by a Philox round constant whose high half is used (IMAD.HI.U32, IMAD.WIDE.U32,
    UIMAD.WIDE.U32 with the constant as an immediate, written signed or not)."""
    if not re.fullmatch(r"U?IMAD\.(HI|WIDE)\.U32", _opcode(instr)):
        return False
    return any(int(imm, 16) & 0xFFFFFFFF in PHILOX_ROUND_CONSTANTS for imm in re.findall(r"-?0x[0-9a-f]+", instr))


def loop_counts(instrs: list[tuple[int, str]], lo: int, hi: int) -> dict[str, float]:
    """Static counts over the instructions at addresses [lo, hi]: instrs (no NOPs), barriers (BAR.*), shfl, warpsync,
    ldg (LDG, LDGSTS), mufu, philox (rounds: multiplies by a round constant whose high half is used, / 2)."""
    ops = [_opcode(instr) for addr, instr in instrs if lo <= addr <= hi]
    body = [instr for addr, instr in instrs if lo <= addr <= hi]

    def count(pattern):
        return sum(bool(re.match(pattern, op)) for op in ops)

    return dict(instrs=sum(op != "NOP" for op in ops), barriers=count(r"BAR(\.|$)"), shfl=count(r"SHFL(\.|$)"),
                warpsync=count(r"WARPSYNC(\.|$)"), ldg=count(r"LDG(STS)?(\.|$)"), mufu=count(r"MUFU(\.|$)"),
                philox=sum(map(is_philox_multiply, body)) / 2)


def line_info(disassembly: str, sources: dict[str, str] | None = None) -> dict[int, tuple[str, int]]:
    """Address -> (source file, line) from `nvdisasm -g`: each `//## File "...", line N` names the instructions
    after it. A file that is not there (a cubin from Triton's cache, compiled from the same source elsewhere) is
    looked up by its name in `sources` (file name -> path)."""
    out, where = {}, None
    for text in disassembly.splitlines():
        mark = re.search(r'//## File "([^"]+)", line (\d+)', text)
        if mark:
            path = mark.group(1)
            if sources and not os.path.exists(path):
                path = sources.get(os.path.basename(path), path)
            where = (path, int(mark.group(2)))
            continue
        instr = re.search(r"/\*([0-9a-f]{4,})\*/", text)
        if instr and where is not None:
            out[int(instr.group(1), 16)] = where
    return out


@functools.cache
def _source_tree(path: str) -> ast.AST | None:
    try:
        with open(path, encoding="utf-8") as f:
            return ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None


def loop_statement(path: str, line: int) -> ast.For | ast.While | None:
    """The `for`/`while` statement of `path` that starts at `line`, else the innermost one whose lines hold it."""
    tree = _source_tree(path)
    if tree is None:
        return None
    loops = [node for node in ast.walk(tree) if isinstance(node, (ast.For, ast.While))
             and node.lineno <= line <= (node.end_lineno or node.lineno)]
    starting = [node for node in loops if node.lineno == line]
    return (starting or sorted(loops, key=lambda node: node.lineno))[-1] if loops else None


def names_block_v(statement: ast.AST) -> bool:
    """Whether a loop statement (its range or its body) names BLOCK_V."""
    return any(isinstance(node, ast.Name) and node.id == "BLOCK_V" for node in ast.walk(statement))


def loop_table(sass: str, lines: dict[int, tuple[str, int]], block_v: int | None, num_warps: int) -> list[dict]:
    """One dict per SASS loop: lo, hi, source ('file:line' of the loop statement or '?'), kind ('vocab', 'outer',
    'other', '?'), the counts of `loop_counts`, and per element (vocabulary loops): elems (per thread per
    iteration), instrs_per_elem, philox_per_elem (None elsewhere)."""
    instrs = sass_instructions(sass)
    rows = []
    for lo, hi in sass_loops(instrs):
        where = lines.get(hi)
        statement = loop_statement(*where) if where else None
        row = dict(lo=lo, hi=hi, **loop_counts(instrs, lo, hi))
        row["source"] = f"{os.path.basename(where[0])}:{statement.lineno}" if statement else "?"
        row["kind"] = "?" if statement is None else "vocab" if names_block_v(statement) else "other"
        rows.append(row)
    for row in rows:  # a loop holding another statement's vocabulary loop walks something else (rows, splits)
        if row["kind"] == "vocab" and any(other is not row and other["kind"] == "vocab" and
                                          other["source"] != row["source"] and
                                          row["lo"] <= other["lo"] and other["hi"] <= row["hi"] for other in rows):
            row["kind"] = "outer"
    for row in rows:
        elems = block_v / (32 * num_warps) if row["kind"] == "vocab" and block_v else None
        row["elems"] = elems
        row["instrs_per_elem"] = row["instrs"] / elems if elems else None
        row["philox_per_elem"] = row["philox"] / elems if elems else None
    return rows


def kernel_sources() -> dict[str, str]:
    """File name -> path of every module of the kernel package (the loops' source lines name their files)."""
    from specsampler import triton_kernels

    folder = os.path.dirname(triton_kernels.__file__)
    return {name: os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".py")}


def _fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (80, 90, ...); repeatable")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--config", action="append", choices=[c[0] for c in CONFIGS],
                        help="only this configuration; repeatable")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_offline: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_DISABLE_LINE_INFO", None)  # the loops are told apart by their source lines
    import triton

    configs = [c for c in CONFIGS if (not args.quick or c[0] in QUICK) and (not args.config or c[0] in args.config)]
    tool = _cuobjdump()
    disassembler = _tool("nvdisasm")
    print(f"triton {triton.__version__}, torch {torch.__version__}; cuobjdump: {tool or 'not found'}; "
          f"nvdisasm: {disassembler or 'not found'}")
    print(f"{'arch':<6} {'config':<14} {'dtype':<9} {'V':>7} {'kernel':<18} {'warps':>5} {'regs':>5} {'stack':>5} "
          f"{'local':>5} {'spills':>6} {'inloop':>6} {'smem':>6} {'vecload':>7}")
    failures = []
    loop_rows = []
    for arch in args.arch or [80, 90]:
        try:
            results = compile_all(arch, configs)
        except Exception as exc:  # a compilation error: the point of this script
            failures.append(f"sm_{arch}: {type(exc).__name__}: {exc}")
            continue
        dtypes = {name: (dtype, vocab) for name, dtype, vocab, _ in configs}
        configs_opts = {name: opt for name, _, _, opt in configs}
        sources = kernel_sources()
        for config, kernel_name, kernel, block_v in results:
            dtype, vocab = dtypes[config]
            use, loops = {}, []
            warps = kernel.metadata.num_warps
            if tool:
                usage, sass, disassembly = inspect_cubin(kernel.asm["cubin"], tool, disassembler)
                use = resource_usage(kernel.asm["cubin"], tool, usage, sass)
                loops = loop_table(sass, line_info(disassembly, sources), block_v, warps)
            vector_loads = len(re.findall(r"ld\.global(?:\.\w+)*\.v[248]\.", kernel.asm["ptx"]))
            pdl_ops = len(re.findall(r"griddepcontrol\.(?:wait|launch_dependents)", kernel.asm["ptx"]))
            if bool(dict(configs_opts[config]).get("pdl")) != (pdl_ops > 0):
                failures.append(f"sm_{arch} {config} {kernel_name}: {pdl_ops} griddepcontrol instruction(s)")
            if use.get("LOOP_SPILLS", 0) > 0 or use.get("LOCAL", 0) > 0:
                failures.append(f"sm_{arch} {config} {kernel_name}: spills in a loop ({use})")
            print(f"sm_{arch:<3} {config:<14} {str(dtype)[6:]:<9} {vocab:>7} {kernel_name:<18} "
                  f"{warps:>5} {use.get('REG', '?')!s:>5} {use.get('STACK', '?')!s:>5} "
                  f"{use.get('LOCAL', '?')!s:>5} {use.get('SPILLS', '?')!s:>6} {use.get('LOOP_SPILLS', '?')!s:>6} "
                  f"{use.get('SHARED', '?')!s:>6} {vector_loads:>7}")
            for loop in loops:
                where = f"sm_{arch} {config} {kernel_name} loop {loop['lo']:04x}-{loop['hi']:04x} ({loop['source']})"
                if loop["kind"] == "vocab" and loop["barriers"] > 0:
                    failures.append(f"{where}: {loop['barriers']} barrier(s) in a vocabulary loop")
                if loop["kind"] == "?" and disassembler:
                    failures.append(f"{where}: no source line, cannot tell whether it walks the vocabulary")
                loop_rows.append((arch, config, kernel_name, warps, block_v, loop))
    print()
    print(f"{'arch':<6} {'config':<14} {'kernel':<18} {'loop':<9} {'kind':<5} {'source':<20} {'warps':>5} "
          f"{'BLOCK_V':>7} {'instrs':>6} {'/elem':>6} {'bar':>4} {'shfl':>4} {'wsync':>5} {'LDG':>4} {'MUFU':>4} "
          f"{'philox':>6} {'/elem':>5}")
    for arch, config, kernel_name, warps, block_v, loop in loop_rows:
        print(f"sm_{arch:<3} {config:<14} {kernel_name:<18} {loop['lo']:04x}-{loop['hi']:04x} {loop['kind']:<5} "
              f"{loop['source']:<20} {warps:>5} {block_v if block_v is not None else '?'!s:>7} {loop['instrs']:>6} "
              f"{_fmt(loop['instrs_per_elem']):>6} {loop['barriers']:>4} {loop['shfl']:>4} {loop['warpsync']:>5} "
              f"{loop['ldg']:>4} {loop['mufu']:>4} {_fmt(loop['philox']):>6} {_fmt(loop['philox_per_elem'], 2):>5}")
    if tool is None:
        failures.append("cuobjdump not found: registers, spills and loops unknown")
    elif disassembler is None:
        failures.append("nvdisasm not found: no source lines, vocabulary loops unknown")
    for failure in failures:
        print(f"FAIL {failure}")
    print("all variants compiled, no spills in loops, no barrier in a vocabulary loop" if not failures
          else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
