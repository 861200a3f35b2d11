"""The compiler's resource report: registers and spills of every compiled variant of specsampler's two kernels.

Triton keeps what it compiled on the JITFunction: ``fn.device_caches[device][0]`` maps a specialisation key to a
``CompiledKernel`` (Triton 3.2 and later; ``fn.cache[device]`` before). ``n_regs`` and ``n_spills`` come from the
driver when the binary is loaded, i.e. after the first launch. Under ``TRITON_INTERPRET=1`` nothing is compiled and
the report is empty.
"""

from __future__ import annotations

KERNEL_NAMES = ("_row_stats_kernel", "_verify_kernel")
COLUMNS = ("kernel", "config", "constexprs", "num_warps", "n_regs", "n_spills", "shared_bytes")


def _kernel_caches(jit_fn) -> list[dict]:
    """The per-device {key: compiled kernel} dicts of a JITFunction, across Triton versions."""
    fn = jit_fn
    while not hasattr(fn, "device_caches") and not hasattr(fn, "cache") and hasattr(fn, "fn"):
        fn = fn.fn  # an Autotuner or Heuristics wrapper
    caches = []
    for entry in getattr(fn, "device_caches", {}).values():
        first = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(first, dict):
            caches.append(first)
    for entry in getattr(fn, "cache", {}).values() if isinstance(getattr(fn, "cache", None), dict) else ():
        if isinstance(entry, dict):
            caches.append(entry)
    return caches


def _compiled(kernel):
    """The CompiledKernel behind a cache value (Triton 3.9 may store a future while compiling asynchronously)."""
    if not hasattr(kernel, "metadata") and callable(getattr(kernel, "result", None)):
        kernel = kernel.result()
    if getattr(kernel, "n_regs", None) is None and hasattr(kernel, "_init_handles"):
        kernel._init_handles()
    return kernel


def _constexprs(kernel) -> str:
    """'NAME=value' of the upper-case constexprs this variant was compiled for."""
    src = getattr(kernel, "src", None)
    constants = getattr(src, "constants", None) or {}
    names = getattr(getattr(src, "fn", None), "arg_names", None) or []
    out = []
    for key, value in constants.items():
        idx = key[0] if isinstance(key, tuple) and key else key
        name = names[idx] if isinstance(idx, int) and idx < len(names) else str(key)
        if name.isupper():
            out.append(f"{name}={value}")
    return " ".join(sorted(out))


class ResourceReport:
    """Collects each compiled variant once, tagged with the first configuration (dtype/mode) that launched it."""

    def __init__(self):
        self.rows: list[dict] = []
        self.errors: list[str] = []
        self._seen: set[int] = set()

    def collect(self, config: str) -> None:
        """Record the variants compiled since the last call, tagged `config`; never raises."""
        try:
            from specsampler import triton_kernels as kernels
        except Exception as exc:
            self.errors.append(f"cannot import the kernels: {exc}")
            return
        for name in KERNEL_NAMES:
            try:
                for cache in _kernel_caches(getattr(kernels, name)):
                    for value in list(cache.values()):
                        self._add(name, config, value)
            except Exception as exc:  # an unknown Triton layout: report it, never fail the run
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    def _add(self, name: str, config: str, value) -> None:
        if id(value) in self._seen:
            return
        self._seen.add(id(value))
        kernel = _compiled(value)
        meta = getattr(kernel, "metadata", None)
        self.rows.append(dict(kernel=name, config=config, constexprs=_constexprs(kernel),
                              num_warps=getattr(meta, "num_warps", ""), n_regs=getattr(kernel, "n_regs", ""),
                              n_spills=getattr(kernel, "n_spills", ""), shared_bytes=getattr(meta, "shared", "")))

    def spills(self) -> list[dict]:
        """The variants that spill registers."""
        return [r for r in self.rows if isinstance(r["n_spills"], int) and r["n_spills"] > 0]

    def lines(self) -> list[str]:
        """The printed report."""
        if not self.rows:
            why = "; ".join(self.errors) or "no compiled kernels (the interpreter compiles nothing)"
            return [f"resource report: empty ({why})"]
        out = [f"{'kernel':<18} {'config':<16} {'warps':>5} {'regs':>5} {'spills':>6} {'smem':>6}  constexprs"]
        for r in self.rows:
            out.append(f"{r['kernel']:<18} {r['config']:<16} {r['num_warps']!s:>5} {r['n_regs']!s:>5} "
                       f"{r['n_spills']!s:>6} {r['shared_bytes']!s:>6}  {r['constexprs']}")
        out += [f"resource report error: {e}" for e in self.errors]
        return out
