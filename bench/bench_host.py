"""The host path of ``specsampler.verify`` alone, on a CPU: what one eager call costs before any GPU work.

Usage::

    python3 bench/bench_host.py [--calls 2000] [--warmup 200] [--vocab 128256] [--profile]

What is timed: ``specsampler.verify(target, drafts, draft, temperature=T, seed=seeds, backend="triton")`` on CPU
tensors, with Triton's interpreter selected (``TRITON_INTERPRET=1``, set here before Triton is imported) and both
launches replaced by no-ops (``specsampler.triton_kernels.launching.launch`` returns None for
``_row_stats_kernel`` and ``_verify_kernel``): our Python only (argument checks, the launch configuration, the
allocation of the statistics and outputs, building the launch arguments, the ``kernel[grid]`` proxies) and none of
the kernels. On a GPU a call also pays Triton's launch path (binding and specialising the arguments, the cache
look-up, the driver's launch) and the CUDA-only branches of the launchers (device properties, streams), which this
benchmark cannot see: ``bench/bench_verify_gpu.py`` measures those (``launches_<gpu>.csv``, host columns).

Cases: K = 4, V = 128256 (``--vocab``) float32 logits with a draft, a float temperature (1: sampled, 0: greedy) and a
[B] int64 seed tensor, for B = 1 and 64 (the tensors are never read, so they are left uninitialised).

Timing: every call timed alone with ``time.perf_counter_ns`` after ``--warmup`` calls; median, mean and 90th
percentile of ``--calls`` calls. The same calls are split into phases by :class:`LaunchClock`, from timestamps taken
inside the replaced launches: ``pre`` (our Python before launch 1), ``launch1`` (the time inside the replaced
``.run``: the no-op and its timestamps only), ``between``, ``launch2``, ``post`` (after launch 2, until ``verify``
returns); each a median over the calls (so they need not add up to the median total).

Output: a header line (versions, calls), then a table with one row per case::

    case      B  K       V dtype    median_us  mean_us  p90_us  pre_us  launch1_us  between_us  launch2_us  post_us

With ``--profile``: then the top ``--profile-top`` functions by internal time under cProfile, over ``--calls`` calls
of the first case (B = 1, sampled).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KERNELS = ("_row_stats_kernel", "_verify_kernel")
PHASES = ("pre", "launch1", "between", "launch2", "post")
CASES = (("sampled", 1), ("sampled", 64), ("greedy", 1), ("greedy", 64))
COLUMNS = ("case", "B", "K", "V", "dtype", "median_us", "mean_us", "p90_us", *(f"{p}_us" for p in PHASES))
_MISSING = object()


def split_call(t0: int, t1: int, marks: list[tuple[int, int, int]]) -> dict:
    """Nanoseconds per phase of one call that ran from `t0` to `t1`.

    Parameters
    ----------
    t0, t1 : int
        ``perf_counter_ns`` before and after the call.
    marks : list of (launch, start, end)
        The launches seen during the call: 1 (``_row_stats_kernel``) or 2 (``_verify_kernel``), with the times
        around their ``.run``.

    Returns
    -------
    dict
        ``PHASES`` -> ns. A launch not seen gets 0, and its time stays with the phases beside it; a call with no
        launch seen is all ``pre``.
    """
    out = dict.fromkeys(PHASES, 0)
    cursor, gap = t0, "pre"
    for launch, phase in ((1, "launch1"), (2, "launch2")):
        spans = [(start, end) for i, start, end in marks if i == launch]
        if spans:
            out[gap] += spans[0][0] - cursor
            out[phase] = spans[-1][1] - spans[0][0]
            cursor, gap = spans[-1][1], "between"
    out["post" if gap == "between" else "pre"] += t1 - cursor
    return out


class LaunchClock:
    """Splits the host time of calls into phases, with timestamps around both kernels' launches.

    A context manager. Where `module` launches through one function (``launching.launch(kernel, ...)`` of the
    package, ``_launch`` of a single-file kernel module: Triton's path the first time, the compiled launcher after),
    that function is wrapped (or replaced, when `noop`). Otherwise (an older kernel module), ``.run`` of `module`'s
    ``_row_stats_kernel`` and ``_verify_kernel`` is replaced on the instance (``kernel[grid](...)`` calls
    ``kernel.run``) by a wrapper that takes ``time.perf_counter_ns()`` before and after the original, or instead of it
    when `noop` (the launch then returns None); on exit the originals are restored. No synchronisation anywhere.
    :meth:`call` times one call and appends its phases (ns) to ``records``.

    Parameters
    ----------
    module : module
        The kernel package (``specsampler.triton_kernels``), or a baseline copy (a package or a single file).
    noop : bool
        Replace the launches by no-ops.
    """

    def __init__(self, module, noop: bool = False):
        self.module, self.noop = module, noop
        self.marks: list[tuple[int, int, int]] = []
        self.records: list[dict] = []
        self._saved: list[tuple[object, str, object]] = []

    def __enter__(self) -> LaunchClock:
        owner = getattr(self.module, "launching", self.module)  # the package's launch machinery, or a lone file
        name = "launch" if callable(getattr(owner, "launch", None)) else "_launch"
        launch_fn = getattr(owner, name, None)
        if launch_fn is not None:  # one function launches every kernel, through Triton or its compiled launchers
            ids = {getattr(self.module, kernel): launch for launch, kernel in enumerate(KERNELS, 1)}
            marks, noop, now = self.marks, self.noop, time.perf_counter_ns

            def timed_launch(kernel, *args, **kwargs):
                start = now()
                out = None if noop else launch_fn(kernel, *args, **kwargs)
                marks.append((ids[kernel], start, now()))
                return out

            self._saved.append((owner, name, launch_fn))
            setattr(owner, name, timed_launch)
            return self
        for launch, name in enumerate(KERNELS, 1):
            kernel = getattr(self.module, name)
            self._saved.append((kernel, "run", vars(kernel).get("run", _MISSING)))
            kernel.run = self._wrap(launch, kernel.run)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, old in reversed(self._saved):
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        self._saved.clear()

    def _wrap(self, launch: int, run):
        marks, noop, now = self.marks, self.noop, time.perf_counter_ns

        def timed_run(*args, **kwargs):
            start = now()
            out = None if noop else run(*args, **kwargs)
            marks.append((launch, start, now()))
            return out

        return timed_run

    def call(self, fn):
        """Run `fn()` once, recording its phases; returns what it returns."""
        self.marks.clear()
        t0 = time.perf_counter_ns()
        out = fn()
        t1 = time.perf_counter_ns()
        self.records.append(dict(split_call(t0, t1, self.marks), total=t1 - t0, launches=len(self.marks)))
        return out

    def summary(self) -> dict:
        """Median µs of each phase and of the total, mean and 90th percentile µs of the total, and how many calls
        had both launches seen (``seen``)."""
        if not self.records:
            return {}
        totals = sorted(r["total"] for r in self.records)
        out = {f"{p}_us": statistics.median(r[p] for r in self.records) / 1e3 for p in PHASES}
        out.update(median_us=statistics.median(totals) / 1e3, mean_us=statistics.fmean(totals) / 1e3,
                   p90_us=totals[min(len(totals) - 1, int(0.9 * len(totals)))] / 1e3,
                   seen=sum(r["launches"] >= 2 for r in self.records), calls=len(self.records))
        return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="timed calls per case")
    p.add_argument("--warmup", type=int, default=200, help="untimed calls per case first")
    p.add_argument("--num-draft", type=int, default=4, help="K")
    p.add_argument("--vocab", type=int, default=128256, help="V")
    p.add_argument("--profile", action="store_true", help="also cProfile the first case")
    p.add_argument("--profile-top", type=int, default=20, help="entries of the profile printed")
    return p.parse_args(argv)


def make_call(mode: str, batch: int, k: int, vocab: int):
    """A no-argument call of ``specsampler.verify`` on CPU tensors for one case."""
    import torch

    import specsampler

    target = torch.empty(batch, k + 1, vocab, dtype=torch.float32)
    draft = torch.empty(batch, k, vocab, dtype=torch.float32)
    drafts = torch.zeros(batch, k, dtype=torch.int64)
    seeds = torch.arange(batch, dtype=torch.int64)
    temperature = 0.0 if mode == "greedy" else 1.0
    return lambda: specsampler.verify(target, drafts, draft, temperature=temperature, seed=seeds, backend="triton")


def time_case(module, fn, calls: int, warmup: int) -> dict:
    """Warm-up, then `calls` calls timed one by one with the launches replaced by no-ops: see the module docstring."""
    with LaunchClock(module, noop=True) as clock:
        for _ in range(warmup):
            fn()
        for _ in range(calls):
            clock.call(fn)
    return clock.summary()


def table_lines(rows: list[dict]) -> list[str]:
    head = f"{'case':<8} {'B':>3} {'K':>2} {'V':>7} {'dtype':<8}" + "".join(f"{c:>12}" for c in COLUMNS[5:])
    out = [head]
    for r in rows:
        line = f"{r['case']:<8} {r['B']:>3} {r['K']:>2} {r['V']:>7} {r['dtype']:<8}"
        out.append(line + "".join(f"{r[c]:>12.2f}" for c in COLUMNS[5:]))
    return out


def profile_lines(fn, calls: int, top: int, module) -> list[str]:
    """cProfile of `calls` calls (launches no-ops): the `top` functions by internal time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    with LaunchClock(module, noop=True):
        profiler.enable()
        for _ in range(calls):
            fn()
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return [line for line in text.getvalue().splitlines() if line.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        print("triton was imported before TRITON_INTERPRET=1 could be set", file=sys.stderr)
        return 2
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: CPU tensors take the kernel path
    from devcheck_bootstrap import ensure_importable

    where = ensure_importable()
    import torch
    import triton

    from specsampler import triton_kernels as kernels

    print(f"host path of specsampler.verify (from {where}) on the CPU, launches replaced by no-ops; torch "
          f"{torch.__version__}, triton {triton.__version__}; {args.calls} calls per case after {args.warmup}")
    rows = []
    for mode, batch in CASES:
        fn = make_call(mode, batch, args.num_draft, args.vocab)
        summary = time_case(kernels, fn, args.calls, args.warmup)
        if summary["seen"] < summary["calls"]:
            print(f"note: {mode} B={batch}: both launches seen in {summary['seen']} of {summary['calls']} calls")
        rows.append(dict(summary, case=mode, B=batch, K=args.num_draft, V=args.vocab, dtype="float32"))
    print("\n".join(table_lines(rows)))
    if args.profile:
        mode, batch = CASES[0]
        print(f"\ncProfile: {args.calls} calls, {mode} B={batch}, top {args.profile_top} by internal time")
        print("\n".join(profile_lines(make_call(mode, batch, args.num_draft, args.vocab), args.calls,
                                      args.profile_top, kernels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
