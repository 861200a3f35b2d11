"""Compile the token-tree kernels (``triton_kernels/tree_kernel.py``, ``triton_kernels/tree_traversal.py``) for an
NVIDIA GPU offline, with ``bench/compile_offline.py``'s driver and cubin readers: registers, spills (in all and inside
loops) and the loops.

Each configuration runs the real launcher (``verify_tree_rows``, or ``verify_tree_rule_rows`` for the ``trav-`` and
``wor-`` configurations) on CPU tensors (never read) with the GPU tile width, so launch 1 and the cut launch compile
too; only ``_tree_kernel`` and ``_traversal_kernel`` are reported (compile_offline.py covers the others).

    python bench/compile_offline_tree.py --arch 90 > bench/results/compile_offline_tree_triton3.9.txt

Exit status 0 when every variant compiled with no spill inside a loop and no local arrays.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compile_offline as co  # noqa: E402

# name -> options of the call (B = 4, N = 8, V = 128256 unless set)
CONFIGS = [
    ("iid-f32", dict(dtype=torch.float32)),
    ("iid-bf16", dict(dtype=torch.bfloat16)),
    ("point-bf16", dict(dtype=torch.bfloat16, draft=False)),
    ("rows-bf16", dict(dtype=torch.bfloat16, row_temp=True, row_seed=True, ragged=True)),
    ("warp-bf16", dict(dtype=torch.bfloat16, warp=True)),
    ("given-f32", dict(dtype=torch.float32, given=True)),
    # _traversal_kernel: traversal (i.i.d., without replacement, point masses), the token rule without replacement
    ("trav-iid-bf16", dict(dtype=torch.bfloat16, rule="traversal")),
    ("trav-wor-bf16", dict(dtype=torch.bfloat16, rule="traversal", wor=True)),
    ("trav-point-bf16", dict(dtype=torch.bfloat16, rule="traversal", draft=False)),
    ("trav-rows-bf16", dict(dtype=torch.bfloat16, rule="traversal", wor=True, row_temp=True, row_seed=True,
                            ragged=True)),
    ("trav-warp-bf16", dict(dtype=torch.bfloat16, rule="traversal", wor=True, warp=True)),
    ("trav-given-f32", dict(dtype=torch.float32, rule="traversal", given=True)),
    ("wor-token-bf16", dict(dtype=torch.bfloat16, rule="token", wor=True)),
]


def _call(opt, verify_tree_rows, verify_tree_rule_rows, batch=4, n=8, vocab=128256):
    from specsampler.triton_kernels.tree_kernel import GPU_BLOCK_V

    from specsampler.torch_backend import Warp

    dtype = opt["dtype"]
    target = torch.zeros(batch, n + 1, vocab, dtype=dtype)
    draft = torch.zeros(batch, n + 1, vocab, dtype=dtype) if opt.get("draft", True) else None
    tokens = torch.zeros(batch, n, dtype=torch.int64)
    parents = torch.zeros(batch, n, dtype=torch.int64)
    ragged = torch.full((batch,), n, dtype=torch.int64) if opt.get("ragged") else None
    temperature = torch.ones(batch) if opt.get("row_temp") else 1.0
    seed = torch.arange(batch, dtype=torch.int64) if opt.get("row_seed") else 7
    warp = Warp(50, 0.9, float("-inf")) if opt.get("warp") else None
    uniforms = torch.zeros(batch, n) if opt.get("given") else None
    noise = torch.ones(batch, vocab) if opt.get("given") else None
    args = (target, tokens, parents, draft, ragged, temperature, seed, warp, 4, uniforms, noise)
    if "rule" in opt:
        verify_tree_rule_rows(*args, block_v=GPU_BLOCK_V, traversal=opt["rule"] == "traversal",
                              without_replacement=opt.get("wor", False))
    else:
        verify_tree_rows(*args, block_v=GPU_BLOCK_V)


def compile_tree(arch: int) -> list:
    """(config name, kernel name, CompiledKernel, BLOCK_V) of ``_tree_kernel`` and ``_traversal_kernel`` in every
    configuration."""
    from specsampler.triton_kernels import verify_tree_rows, verify_tree_rule_rows

    from specsampler import triton_kernels as kernels

    results = []
    launched = (kernels._row_stats_kernel, kernels._warp_cut_kernel, kernels._tree_kernel, kernels._traversal_kernel)
    with co.offline(arch, launched) as compiled:
        for name, opt in CONFIGS:
            start = len(compiled)
            _call(opt, verify_tree_rows, verify_tree_rule_rows)
            results += [(name, *entry) for entry in compiled[start:] if entry[0] in ("_tree_kernel",
                                                                                      "_traversal_kernel")]
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10; repeatable (default 90)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_offline_tree: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_DISABLE_LINE_INFO", None)
    import triton

    tool = co._cuobjdump()
    disassembler = co._tool("nvdisasm")
    print(f"triton {triton.__version__}, torch {torch.__version__}; cuobjdump: {tool or 'not found'}; "
          f"nvdisasm: {disassembler or 'not found'}")
    print(f"{'arch':<6} {'config':<15} {'kernel':<17} {'warps':>5} {'regs':>5} {'stack':>5} {'local':>5} "
          f"{'spills':>6} {'inloop':>6} {'smem':>6}")
    failures, loop_rows = [], []
    for arch in args.arch or [90]:
        try:
            results = compile_tree(arch)
        except Exception as exc:  # a compilation error: the point of this script
            failures.append(f"sm_{arch}: {type(exc).__name__}: {exc}")
            continue
        sources = co.kernel_sources()
        for config, kernel_name, kernel, block_v in results:
            use, loops = {}, []
            warps = kernel.metadata.num_warps
            if tool:
                usage, sass, disassembly = co.inspect_cubin(kernel.asm["cubin"], tool, disassembler)
                use = co.resource_usage(kernel.asm["cubin"], tool, usage, sass)
                loops = co.loop_table(sass, co.line_info(disassembly, sources), block_v, warps)
            if use.get("LOOP_SPILLS", 0) > 0 or use.get("LOCAL", 0) > 0:
                failures.append(f"sm_{arch} {config} {kernel_name}: spills in a loop ({use})")
            print(f"sm_{arch:<3} {config:<15} {kernel_name:<17} {warps:>5} {use.get('REG', '?')!s:>5} "
                  f"{use.get('STACK', '?')!s:>5} {use.get('LOCAL', '?')!s:>5} {use.get('SPILLS', '?')!s:>6} "
                  f"{use.get('LOOP_SPILLS', '?')!s:>6} {use.get('SHARED', '?')!s:>6}")
            loop_rows += [(arch, config, kernel_name, warps, block_v, loop) for loop in loops]
    print()
    print(f"{'arch':<6} {'config':<15} {'loop':<9} {'kind':<5} {'source':<22} {'BLOCK_V':>7} {'instrs':>6} "
          f"{'/elem':>6} {'bar':>4} {'shfl':>4} {'LDG':>4} {'MUFU':>4} {'philox':>6}")
    for arch, config, _, _, block_v, loop in loop_rows:
        print(f"sm_{arch:<3} {config:<15} {loop['lo']:04x}-{loop['hi']:04x} {loop['kind']:<5} {loop['source']:<22} "
              f"{block_v if block_v is not None else '?'!s:>7} {loop['instrs']:>6} "
              f"{co._fmt(loop['instrs_per_elem']):>6} {loop['barriers']:>4} {loop['shfl']:>4} {loop['ldg']:>4} "
              f"{loop['mufu']:>4} {co._fmt(loop['philox']):>6}")
    if tool is None:
        failures.append("cuobjdump not found: registers and spills unknown")
    for failure in failures:
        print(f"FAIL {failure}")
    print("all variants compiled, no spills in loops" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
