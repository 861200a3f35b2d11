"""Compile specsampler's kernels for an NVIDIA GPU on a machine without one, and report registers and spills.

Triton's whole pipeline runs on the host: front end, MLIR passes, LLVM to PTX, and ptxas (shipped in the triton
wheel) to a cubin. Only loading and launching need a GPU. This script stands in an offline "driver" that names the
target (sm_80, sm_90, ...) and turns every launch into a warm-up (compile, do not run), then calls the real launchers
(`row_stats`, `verify_rows`) over a matrix of configurations, so each variant is specialised exactly as a launch on a
GPU would specialise it (the GPU tile widths and warps, dtypes, flags, 16-byte alignment of pointers and strides).
`cuobjdump` (also in the wheel) then reads each cubin's registers, stack and local memory, and its SASS: spills are
its local loads and stores (LDL/STL), counted in all and inside loops (the vocabulary loops, where they would cost
per tile; one register saved across the kernel costs a few instructions per program). `vecload` counts the PTX's
vector loads (ld.global.v2/v4): launch 1 reads whole tiles of 16-byte aligned rows in 128-bit vectors.

    python bench/compile_offline.py                 # sm_80 and sm_90, every configuration
    python bench/compile_offline.py --arch 90 --quick

Exit status 0 when every variant compiled with no spill inside a loop and no local arrays, 1 otherwise. It must run
without TRITON_INTERPRET=1. What it cannot show: that the kernels run correctly (the tests on a GPU:
bench/device_check.sh), and timings.
"""

from __future__ import annotations

import argparse
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
]
QUICK = ("sampled", "mixed-ragged", "probs-one-hot", "unaligned-V")


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


def compile_all(arch: int, configs: list) -> list[tuple[str, str, object]]:
    """Run the launchers for `configs` with every launch turned into a compilation for sm_`arch`.

    Returns (config name, kernel name, CompiledKernel) per launch.
    """
    import triton.runtime.jit as jit
    from specsampler.triton_kernels import row_stats, verify_rows
    from specsampler.triton_kernels import verify as kernels
    from triton.runtime.driver import driver

    def forget():  # the per-device caches hold the target they were made for (device 0 for every arch here)
        for fn in (kernels._row_stats_kernel, kernels._verify_kernel):
            fn.device_caches.clear()

    compiled = []
    run = jit.JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.__name__, kernel))
        return kernel

    previous = driver._active  # (reset_active() would look for a real GPU driver)
    forget()
    jit.JITFunction.run = compile_only
    driver.set_active(OfflineDriver(arch))
    results = []
    try:
        for name, dtype, vocab, opt in configs:
            start = len(compiled)
            _launch(dtype, vocab, opt, row_stats, verify_rows)
            results += [(name, kernel_name, kernel) for kernel_name, kernel in compiled[start:]]
    finally:
        jit.JITFunction.run = run
        driver._active = previous
        forget()
    return results


def _launch(dtype, vocab, opt, row_stats, verify_rows, batch=4, k=4, splits=4):
    """One verification through the real launchers with their GPU tile widths (CPU tensors: never read)."""
    from specsampler.triton_kernels.verify import GPU_BLOCK_V_RACE, GPU_BLOCK_V_STATS

    scores = torch.zeros(batch, k + 1, vocab, dtype=dtype)
    draft = None if opt.get("one_hot") else torch.zeros(batch, k, vocab, dtype=dtype)
    tokens = torch.zeros(batch, k, dtype=torch.int64)
    ragged = torch.full((batch,), k, dtype=torch.int64) if opt.get("ragged") else None
    temperature = torch.ones(batch) if opt.get("row_temp") else 1.0  # per-row T (0 = greedy)
    seed = torch.arange(batch, dtype=torch.int64) if opt.get("row_seed") else 7
    uniforms = torch.zeros(batch, k) if opt.get("given") else None
    noise = torch.ones(batch, vocab) if opt.get("given") else None
    stats = None if opt.get("probs") else row_stats(scores, draft, ragged, temperature, GPU_BLOCK_V_STATS, splits)
    verify_rows(scores, tokens, draft, ragged, temperature, seed, stats, uniforms, noise, GPU_BLOCK_V_RACE, splits)


def _cuobjdump() -> str | None:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.access(bundled, os.X_OK) else shutil.which("cuobjdump")


def resource_usage(cubin: bytes, tool: str) -> dict[str, int]:
    """{'REG', 'STACK', 'SHARED', 'LOCAL', 'SPILLS', 'LOOP_SPILLS'} of the one function in `cubin`.

    SPILLS counts the local-memory loads and stores (LDL/STL) in its SASS, LOOP_SPILLS those inside a loop (between a
    predicated backward branch and its target; the unconditional jumps back from out-of-line code are not loops): a
    register saved once across the kernel costs a few instructions per program, one inside the vocabulary loop costs
    them per tile.
    """
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in usage.stdout.splitlines() if "REG:" in ln)
    out = {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
    out["SPILLS"], out["LOOP_SPILLS"] = count_spills(sass)
    return out


def count_spills(sass: str) -> tuple[int, int]:
    """(local loads and stores, those inside a loop) in cuobjdump's SASS of one function."""
    spills, loops = [], []
    for match in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass):
        addr, instr = int(match.group(1), 16), match.group(2)
        if re.search(r"\b(STL|LDL)\b", instr):
            spills.append(addr)
        branch = re.search(r"^\s*@!?U?P\w+\s+BRA\b[^;]*?(0x[0-9a-f]+)\s*$", instr)  # a predicated back edge
        if branch and int(branch.group(1), 16) < addr:
            loops.append((int(branch.group(1), 16), addr))
    return len(spills), sum(any(lo <= a <= hi for lo, hi in loops) for a in spills)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (80, 90, ...); repeatable")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_offline: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    import triton

    configs = [c for c in CONFIGS if not args.quick or c[0] in QUICK]
    tool = _cuobjdump()
    print(f"triton {triton.__version__}, torch {torch.__version__}; cuobjdump: {tool or 'not found'}")
    print(f"{'arch':<6} {'config':<14} {'dtype':<9} {'V':>7} {'kernel':<18} {'warps':>5} {'regs':>5} {'stack':>5} "
          f"{'local':>5} {'spills':>6} {'inloop':>6} {'smem':>6} {'vecload':>7}")
    failures = []
    for arch in args.arch or [80, 90]:
        try:
            results = compile_all(arch, configs)
        except Exception as exc:  # a compilation error: the point of this script
            failures.append(f"sm_{arch}: {type(exc).__name__}: {exc}")
            continue
        dtypes = {name: (dtype, vocab) for name, dtype, vocab, _ in configs}
        for config, kernel_name, kernel in results:
            dtype, vocab = dtypes[config]
            use = resource_usage(kernel.asm["cubin"], tool) if tool else {}
            vector_loads = len(re.findall(r"ld\.global(?:\.\w+)*\.v[248]\.", kernel.asm["ptx"]))
            if use.get("LOOP_SPILLS", 0) > 0 or use.get("LOCAL", 0) > 0:
                failures.append(f"sm_{arch} {config} {kernel_name}: spills in a loop ({use})")
            print(f"sm_{arch:<3} {config:<14} {str(dtype)[6:]:<9} {vocab:>7} {kernel_name:<18} "
                  f"{kernel.metadata.num_warps:>5} {use.get('REG', '?')!s:>5} {use.get('STACK', '?')!s:>5} "
                  f"{use.get('LOCAL', '?')!s:>5} {use.get('SPILLS', '?')!s:>6} {use.get('LOOP_SPILLS', '?')!s:>6} "
                  f"{use.get('SHARED', '?')!s:>6} {vector_loads:>7}")
    if tool is None:
        failures.append("cuobjdump not found: registers and spills unknown")
    for failure in failures:
        print(f"FAIL {failure}")
    print("all variants compiled, no spills in loops" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
