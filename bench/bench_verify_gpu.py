"""Microbenchmarks of ``specsampler.verify`` against its peers, and the copy-bandwidth roofline.

Run by ``bench/device_check.sh`` (which runs the test suite first); standalone::

    python3 bench/bench_verify_gpu.py [--quick] [--budget-seconds S] [--out DIR] [--baseline-kernel PATH]
    python3 bench/bench_verify_gpu.py --dry-run     # CPU, tiny sizes, the kernel under TRITON_INTERPRET=1

Order: the copy and read ceilings; then where the time goes in the goal cases (below); then the warped case (below);
then the grid, goal cases first. Goal cases: K = 4, V = 128256, B in {1, 64, 256}, bfloat16 then float32, sampled
and greedy (the dry run: K = 2, V = 1000, B in {1, 2}). Grid: B in {1, 8, 64, 256}, K in {1, 4, 8}, V in {32000,
128256, 151936, 262144}, float32 and bfloat16 logits, sampled (temperature 1) and greedy (temperature 0) rows; after
the goal cases V = 128256 first. Every case gets fresh random inputs, identical for every provider (see
``devcheck_providers`` for what each one runs). ``--baseline-kernel PATH`` adds the provider ``baseline``: an older
copy of the kernels loaded from PATH (a ``triton_kernels/`` folder, or the single ``triton_kernels/verify.py`` of
commits before the split into one module per launch), timed beside the current kernel in both tables.

Timing: ``triton.testing.do_bench`` medians (short warmup and rep), or ``do_bench_cudagraph`` medians when the case
reads at most ``--graph-mib`` MiB and the provider runs without a host synchronisation (checked with
``torch.cuda.set_sync_debug_mode``) and captures; on a CPU a wall-clock median of a few calls.

Bytes, the least a verification must read, with s the element size of the logits:

    sampled rows:  s * B * ((K+1)*V + K*V + 2*V)   every target and draft logit once, plus the residual row pair
                                                   (p_n and q_n) read again to draw the correction
    greedy rows:   s * B * (K+1)*V                 the target's logits once (the draft's are never needed)

``gbps = bytes / median`` (1e9 bytes/s) and ``pct_of_copy_bw = 100 * gbps / copy_gbps``, where ``copy_gbps`` is the
measured ceiling: a 1 GiB device-to-device ``copy_``, counting bytes read plus written. Beside it the read ceiling:
GB/s of a plain Triton kernel that reads 1 GiB of float32 once and sums it (``devcheck_providers.read_roofline_fn``:
per-lane accumulators, one reduction per program, up to 8 programs per SM), timed as a CUDA graph.

Where the time goes (goal cases, providers ``specsampler``, ``baseline`` and, on sm_90 and later, ``ours+pdl``:
specsampler with programmatic dependent launch, ``launching.PDL``, off by default until this table has timed it; the
summary lines ``PDL ...`` compare the two), one row per provider and case:
- ``launch1_us``, ``launch2_us``: CUDA time of ``_row_stats_kernel`` and ``_verify_kernel`` per call, from
  ``torch.profiler`` (ProfilerActivity.CUDA: the duration of every kernel event whose name holds the kernel's name,
  summed over ``--launch-calls`` calls after a warm-up, divided by the calls); ``total_cuda_us`` their sum;
- ``graph_us``: the whole call timed as a CUDA graph (``do_bench_cudagraph`` median; on a stream if it cannot be
  captured);
- ``host_us_per_call``: host time of one eager call: ``--host-calls`` calls queued with no synchronisation inside the
  loop, wall time / calls (one synchronize before and one after, outside the time). The GPU runs behind the host
  without blocking it as long as the launch queue has room (a few hundred launches), so this is the host's time even
  when the GPU's is longer; the printed ``bound`` column says which of the two is longer;
- ``host_pre_us``, ``host_launch1_us``, ``host_between_us``, ``host_launch2_us``, ``host_post_us``: the same calls
  split by ``time.perf_counter_ns`` taken around both kernels' ``.run`` (``bench_host.LaunchClock``): our Python
  before launch 1, launch 1 (Triton's launch path), between, launch 2, after; medians over ``--host-calls`` calls;
- ``read_roofline_us``: a plain Triton read and sum of the bytes launch 1 reads (sampled: B*(2K+1)*V elements of the
  dtype, greedy: B*(K+1)*V), CUDA-graph median; ``pct_of_read_roofline = 100 * read_roofline_us / graph_us``;
- ``pct_of_copy_bw``: as in the verify CSV, with ``graph_us`` as the time.
On a CPU (the dry run) there is no profiler: the launch columns are the wall time inside the interpreted ``.run``,
and every timing is a wall clock.

The warped case (``warp_peers.py``; ``--skip-warped`` leaves it out): temperature 0.7, top_k 50, top_p 0.9, float32,
K = 4, V = 128256, B in {1, 64} (the dry run: K = 2, V = 1000, B in {1, 2}), fresh inputs per B:
- ``verify``: ``specsampler`` (``verify(..., temperature=0.7, top_k=50, top_p=0.9, backend="triton")``: the warpers
  inside the kernel, no sort), ``torch`` (the same on our torch backend: topk, no sort) and the peer
  ``warpers+verify``: transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper`` (a sort
  of every row; their torch equivalent without transformers) on the target's and the draft's logits, then
  ``specsampler.verify`` at temperature 1 on the Triton kernel;
- ``sample``: one token per row from [B, V] logits: ``specsampler`` (``sample(..., backend="triton")``), ``torch``
  (``backend="torch"``) and the peer ``warpers+multinomial``: the same warpers, a softmax and ``torch.multinomial``.
Timed like the grid (CUDA graphs up to ``--graph-mib``); the table (``peer/ours``: the peer's median over ours) is
printed as measured and again before the verify table.

The methods case (``--skip-methods`` leaves it out): what block verification and the log-probabilities cost on the
Triton kernel, bfloat16, K = 4, V = 128256, temperature 1, drafts sampled from a draft close to the target (the dry
run: K = 2, V = 1000), fresh inputs per B, every variant on the same ones:
- ``block``: ``verify(..., method="block")`` against ``method="token"``, B in {1, 64, 256} (dry: 1);
- ``logprobs``: ``verify(..., return_logprobs=True)`` against the plain call (token verification), B = 64 (dry: 1);
- ``tree``: ``verify_tree`` of a (3, 2, 1, 1) tree (N = 21 nodes; dry: (2, 1), N = 4) with point-mass candidates
  (the draft's top tokens, ``tree-top``), i.i.d. ones (``tree-iid``) and ones drawn without replacement
  (Gumbel-top-k, ``tree-wor``), verified by the token rule, and the same three by Traversal Verification
  (``trav-top``, ``trav-iid``, ``trav-wor``), against token verification of a chain of K drafts, B in {1, 8, 64}
  (dry: 1); ``K`` holds the drafts verified (N for the trees), ``accepted`` the mean depth.
Timed like the grid (CUDA graphs up to ``--graph-mib``); ``over_token``: the variant's median over token
verification's (without log-probabilities) on the same inputs; ``over_tree`` (traversal only): its median over the
token rule's on the same tree and candidates (the goal: at most 1.3); the mean accepted drafts per row of both methods
(``accepted``) on those inputs with the timed seeds.

Outputs, under ``--out`` (default ``$OUT``, else ``bench/out``), the CSV flushed after every case so that a run cut
short keeps what it measured:
- ``verify_<gpu>.csv``: ``device, B, K, V, dtype, provider, median_us, bytes, gbps, pct_of_copy_bw, mode``, one row
  per provider and case (``mode``, sampled or greedy, is the one column beyond the issue's list, kept last);
- ``launches_<gpu>.csv``: ``device, B, K, V, dtype, mode, launch1_us, launch2_us, total_cuda_us, graph_us,
  host_us_per_call, read_roofline_us, pct_of_read_roofline, pct_of_copy_bw``, then ``host_pre_us, host_launch1_us,
  host_between_us, host_launch2_us, host_post_us, provider`` (see above; empty where not measured);
- ``warped_<gpu>.csv``: ``device, what, B, K, V, dtype, provider, median_us, peer_over_ours, how`` (``what``:
  verify or sample; ``peer_over_ours``: the peer's median over specsampler's, on the peer's row);
- ``methods_<gpu>.csv``: ``device, what, B, K, V, dtype, variant, median_us, over_token, accepted, how, over_tree``;
- ``resources_<gpu>.csv``: registers and spills of every compiled variant of the two kernels;
- ``verify_<gpu>.png``: the roofline plot (with matplotlib: the optional extra ``plot``);
- printed: the launches table as it is measured; at the end notes (skipped providers and why, scaled timings), the
  copy and read ceilings, the launches table again, the resource report, the goals, the baseline's summary, and the
  verify table last (its ``vs baseline`` column: the baseline's median over ours).
Exit status: 0, or 1 when specsampler failed on some case.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

COLUMNS = ("device", "B", "K", "V", "dtype", "provider", "median_us", "bytes", "gbps", "pct_of_copy_bw", "mode")
LAUNCH_COLUMNS = ("device", "B", "K", "V", "dtype", "mode", "launch1_us", "launch2_us", "total_cuda_us", "graph_us",
                  "host_us_per_call", "read_roofline_us", "pct_of_read_roofline", "pct_of_copy_bw", "host_pre_us",
                  "host_launch1_us", "host_between_us", "host_launch2_us", "host_post_us", "provider")
FULL = dict(B=(1, 8, 64, 256), K=(1, 4, 8), V=(128256, 32000, 151936, 262144))
QUICK = dict(B=(1, 64), K=(4,), V=(128256,))
DRY = dict(B=(1, 2), K=(1, 2), V=(7, 1000))
GOAL = dict(B=(1, 64, 256), K=(4,), V=(128256,))
DRY_GOAL = dict(B=(1, 2), K=(2,), V=(1000,))
WARPED = dict(B=(1, 64), K=4, V=128256)
DRY_WARPED = dict(B=(1, 2), K=2, V=1000)
METHODS = dict(block=(1, 64, 256), logprobs=(64,), tree=(1, 8, 64), K=4, V=128256, TREE=(3, 2, 1, 1))
DRY_METHODS = dict(block=(1,), logprobs=(1,), tree=(1,), K=2, V=1000, TREE=(2, 1))  # (the interpreter: seconds)
METHODS_COLUMNS = ("device", "what", "B", "K", "V", "dtype", "variant", "median_us", "over_token", "accepted", "how",
                   "over_tree")
WARPED_COLUMNS = ("device", "what", "B", "K", "V", "dtype", "provider", "median_us", "peer_over_ours", "how")
KERNEL_NAMES = ("_row_stats_kernel", "_verify_kernel")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, the kernel under the interpreter")
    p.add_argument("--quick", action="store_true", help="B in {1, 64}, K = 4, V = 128256 only")
    p.add_argument("--budget-seconds", type=float, default=200.0, help="start no new case after this long")
    p.add_argument("--compile-budget-seconds", type=float, default=None,
                   help="drop torch_compile once its timings (compilations included) have taken this long in total "
                        "(default 60; 8 in the dry run, which compiles with backend='eager')")
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "out"))
    p.add_argument("--providers", default="all", help="comma-separated subset of the providers")
    p.add_argument("--row-cap", type=int, default=8, help="rows of the transformers path timed (then scaled)")
    p.add_argument("--warmup-ms", type=float, default=2.0, help="do_bench warmup")
    p.add_argument("--rep-ms", type=float, default=10.0, help="do_bench and do_bench_cudagraph rep")
    p.add_argument("--graph-mib", type=float, default=64.0, help="use CUDA graphs up to this many MiB read")
    p.add_argument("--baseline-kernel", default=None, metavar="PATH",
                   help="an older copy of the triton_kernels/ folder (or of the single-file triton_kernels/verify.py "
                        "of older commits), timed as the provider 'baseline'")
    p.add_argument("--launch-calls", type=int, default=None, help="calls profiled per goal case (default 20; 2 dry)")
    p.add_argument("--host-calls", type=int, default=None,
                   help="calls queued for the host time per goal case (default 200; 3 dry)")
    p.add_argument("--skip-launches", action="store_true", help="no per-launch / host / read-roofline table")
    p.add_argument("--skip-warped", action="store_true", help="no warped case (temperature 0.7, top-k 50, top-p 0.9)")
    p.add_argument("--skip-methods", action="store_true",
                   help="no methods case (block against token verification, with and without log-probabilities)")
    args = p.parse_args(argv)
    if args.compile_budget_seconds is None:
        args.compile_budget_seconds = 8.0 if args.dry_run else 60.0
    if args.launch_calls is None:
        args.launch_calls = 2 if args.dry_run else 20
    if args.host_calls is None:
        args.host_calls = 3 if args.dry_run else 200
    return args


def grid(args) -> list:
    """The cases, in the order they are timed: the goal cases, then the rest (the goals' V first)."""
    import torch
    from devcheck_providers import Case

    sizes = DRY if args.dry_run else QUICK if args.quick else FULL
    cases = [Case(b, k, v, dtype, mode)
             for v in sizes["V"] for dtype in (torch.float32, torch.bfloat16) for mode in ("sampled", "greedy")
             for b in sizes["B"] for k in sizes["K"]]
    goal = sorted((c for c in cases if is_goal(c, args)),
                  key=lambda c: (c.dtype != torch.bfloat16, c.mode != "sampled", c.B))
    return goal + [c for c in cases if not is_goal(c, args)]


def is_goal(case, args) -> bool:
    """Whether `case` is one of the goal cases (K = 4, V = 128256, B in {1, 64, 256}; smaller in the dry run)."""
    sizes = DRY_GOAL if args.dry_run else GOAL
    return case.B in sizes["B"] and case.K in sizes["K"] and case.V in sizes["V"]


def case_seed(case) -> int:
    """A fixed seed per case: fresh inputs for every case, the same ones from run to run."""
    return (case.B * 1_000_003 + case.K * 10_007 + case.V * 3 + (case.mode == "greedy")) % (1 << 31)


def min_bytes(case) -> int:
    """The least a verification must read (see the module docstring)."""
    import torch

    s = torch.finfo(case.dtype).bits // 8
    target = case.B * (case.K + 1) * case.V * s
    return target if case.mode == "greedy" else target + case.B * case.K * case.V * s + 2 * case.B * case.V * s


class Timer:
    """Median time of a callable in ms: do_bench (CUDA graphs for small cases) on a GPU, wall clock on a CPU."""

    def __init__(self, device, args, notes):
        self.device, self.args, self.notes = device, args, notes

    def __call__(self, fn, graph: bool, label: str = "", rep_ms: float | None = None) -> tuple[float, str]:
        """(median ms, 'graph' / 'stream' / 'wall'); `label` names the provider in notes; `rep_ms` overrides --rep-ms.
        """
        if self.device.type != "cuda":
            return self._wall(fn), "wall"
        import torch
        import triton.testing

        rep = rep_ms or self.args.rep_ms
        fn()
        torch.cuda.synchronize()
        if graph and _syncs(fn):
            self.notes.add(f"{label}: synchronises with the host, so it is timed on a stream, never as a CUDA graph")
        elif graph:
            try:
                return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median"), "graph"
            except Exception as exc:  # capture unsupported by this provider or this Triton: time it on a stream
                torch.cuda.synchronize()
                self.notes.add(f"{label}: CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:120]}); "
                               "timed on a stream")
        ms = triton.testing.do_bench(fn, warmup=self.args.warmup_ms, rep=rep, return_mode="median")
        return ms, "stream"

    @staticmethod
    def _wall(fn, reps: int = 3, max_s: float = 0.3) -> float:
        fn()
        times = []
        while len(times) < reps and (not times or sum(times) < max_s):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3


def _syncs(fn) -> bool:
    """Whether `fn` synchronises with the host (then it cannot be captured in a CUDA graph)."""
    import torch

    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return False
    except RuntimeError:
        return True
    finally:
        torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.synchronize()


def copy_ceiling(device, timer: Timer, dry_run: bool) -> float:
    """GB/s of a large device-to-device copy, bytes read plus written."""
    import torch

    n = (1 << 22) if dry_run else (1 << 28)  # float32: 16 MiB on a CPU, 1 GiB on a GPU
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms, _ = timer(lambda: dst.copy_(src), graph=False, label="copy", rep_ms=50.0)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def read_ceiling(device, timer: Timer, dry_run: bool) -> float:
    """GB/s of a plain Triton read-and-sum of 1 GiB of float32 (64 KiB in the dry run), bytes read."""
    import torch
    from devcheck_providers import read_roofline_fn

    n = (1 << 14) if dry_run else (1 << 28)
    ms, _ = timer(read_roofline_fn(n, torch.float32, device), graph=True, label="read ceiling", rep_ms=50.0)
    return 4 * n / (ms * 1e-3) / 1e9


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_us(events, calls: int) -> tuple:
    """(launch 1 µs, launch 2 µs) per call from profiler events; None for a kernel that never ran.

    Parameters
    ----------
    events : iterable
        ``torch.profiler`` FunctionEvents: the CUDA ones (``device_type``) whose ``name`` holds a kernel's name
        count, with the duration of their ``time_range``.
    calls : int
        The calls profiled.
    """
    from torch.autograd import DeviceType

    totals = [0.0] * len(KERNEL_NAMES)
    seen = [0] * len(KERNEL_NAMES)
    for evt in events:
        if evt.device_type != DeviceType.CUDA:
            continue
        for i, name in enumerate(KERNEL_NAMES):
            if name in evt.name:
                totals[i] += evt.time_range.elapsed_us()
                seen[i] += 1
    return tuple(t / calls if n else None for t, n in zip(totals, seen, strict=True))


def profile_launches(fn, device, calls: int) -> tuple:
    """CUDA time per call of each launch of `fn` (µs), from torch.profiler over `calls` calls."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        _sync(device)
    return kernel_us(prof.events(), calls)


def _profiled(fn, provider: str, state, args) -> tuple:
    """:func:`profile_launches`, with a note instead of an exception, and a note for a kernel it did not see."""
    try:
        times = profile_launches(fn, state["torch_device"], args.launch_calls)
    except Exception as exc:  # CUPTI unavailable or a profiler bug: the other columns still stand
        state["notes"].add(f"torch.profiler failed for {provider}: {type(exc).__name__}: {str(exc)[:200]}")
        return None, None
    for name, t in zip(KERNEL_NAMES, times, strict=True):
        if t is None:
            state["notes"].add(f"torch.profiler saw no CUDA kernel named {name} in {provider}'s calls "
                               "(its launch column is empty)")
    return times


def host_per_call(fn, device, calls: int) -> float:
    """µs of host time per call: `calls` calls queued without synchronisation, wall time / calls."""
    _sync(device)
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter_ns()
    _sync(device)
    return (t1 - t0) / calls / 1e3


def host_split(fn, module, device, calls: int) -> dict:
    """Median µs of each host phase of `calls` calls (``bench_host.LaunchClock`` around `module`'s launches)."""
    from bench_host import LaunchClock

    _sync(device)
    with LaunchClock(module) as clock:
        for _ in range(calls):
            clock.call(fn)
    _sync(device)
    return clock.summary()


def launch_row(case, provider, fn, module, read_us, timer, state, args) -> dict:
    """One row of ``launches_<gpu>.csv`` for `provider` on `case` (see the module docstring)."""
    device = state["torch_device"]
    fn()
    _sync(device)
    split = host_split(fn, module, device, max(args.host_calls, args.launch_calls))
    if split.get("seen", 0) < split.get("calls", 1):
        state["notes"].add(f"{provider}: both launches seen through .run in {split.get('seen', 0)} of "
                           f"{split.get('calls', 0)} calls; the host split puts the rest in host_pre_us")
    if device.type == "cuda":
        l1, l2 = _profiled(fn, provider, state, args)
    else:
        l1, l2 = split.get("launch1_us"), split.get("launch2_us")
    graph_ms, _ = timer(fn, graph=True, label=provider)
    graph_us = graph_ms * 1e3
    gbps = min_bytes(case) / (graph_us * 1e-6) / 1e9
    total = None if l1 is None and l2 is None else (l1 or 0.0) + (l2 or 0.0)
    row = dict(device=state["device"], B=case.B, K=case.K, V=case.V, dtype=case.dtype_name, mode=case.mode,
               launch1_us=_opt(l1), launch2_us=_opt(l2), total_cuda_us=_opt(total),
               graph_us=_sig(graph_us), host_us_per_call=_sig(host_per_call(fn, device, args.host_calls)),
               read_roofline_us=_opt(read_us), pct_of_read_roofline=_opt(read_us and 100 * read_us / graph_us),
               pct_of_copy_bw=_sig(100 * gbps / state["copy_gbps"]), provider=provider)
    row.update({f"host_{p}_us": _opt(split.get(f"{p}_us")) for p in ("pre", "launch1", "between", "launch2", "post")})
    return row


def _opt(x) -> float | str:
    return "" if x is None else _sig(x)


def read_roofline_us(case, timer, state) -> float | None:
    """µs of the plain read of launch 1's bytes for `case` (CUDA-graph median), or None (noted) if it failed."""
    import torch
    from devcheck_providers import launch1_elements, read_roofline_fn

    try:
        read = read_roofline_fn(launch1_elements(case), case.dtype, state["torch_device"])
        return timer(read, graph=True, label="read roofline")[0] * 1e3
    except Exception as exc:  # out of memory, or a Triton that cannot build it: the rest of the row stands
        state["notes"].add(f"read roofline failed on {_label(_case_dict(case))}: {type(exc).__name__}: "
                           f"{str(exc)[:200]}")
        if state["torch_device"].type == "cuda":
            _recover(torch)
        return None


def launch_case(case, providers, timer, state, args) -> list[dict]:
    """The launches rows of one goal case: the read roofline once, then each provider with a kernel module."""
    import torch
    from devcheck_providers import build, make_inputs

    device, notes = state["torch_device"], state["notes"]
    read_us = read_roofline_us(case, timer, state)
    inputs = make_inputs(case, device, seed=case_seed(case))
    rows = []
    for provider, module in providers:
        try:
            pdl = provider == PDL_PROVIDER
            built = build("specsampler" if pdl else provider, case, inputs, baseline=state["baseline"])
            fn = _with_pdl(built.fn, module) if pdl else built.fn
            rows.append(launch_row(case, provider, fn, module, read_us, timer, state, args))
        except Exception as exc:  # ours failing is counted by the grid, which runs the same case
            notes.add(f"launches: {provider} failed on {_label(_case_dict(case))}: {type(exc).__name__}: "
                      f"{str(exc)[:200]}")
            if device.type == "cuda":
                _recover(torch)
    return rows


PDL_PROVIDER = "ours+pdl"  # specsampler with programmatic dependent launch (launching.PDL), where the GPU has it


def _with_pdl(fn, module):
    """`fn` with PDL set for its duration (graph capture included): on the package's launch machinery
    (``module.launching``), or on a single-file kernel module itself."""
    owner = getattr(module, "launching", module)

    def run():
        old, owner.PDL = owner.PDL, True
        try:
            return fn()
        finally:
            owner.PDL = old
    return run


def pdl_lines(rows: list[dict]) -> list[str]:
    """Per goal case, the whole call as a CUDA graph without and with PDL."""
    ours = {(r["B"], r["K"], r["V"], r["dtype"], r["mode"]): r for r in rows if r["provider"] == "specsampler"}
    out = []
    for r in rows:
        base = ours.get((r["B"], r["K"], r["V"], r["dtype"], r["mode"]))
        if r["provider"] == PDL_PROVIDER and base is not None and r["graph_us"] and base["graph_us"]:
            out.append(f"PDL {r['dtype']} {r['mode']} B = {r['B']}: graph {base['graph_us']} -> {r['graph_us']} us "
                       f"({base['graph_us'] / r['graph_us']:.2f}x), host {base['host_us_per_call']} -> "
                       f"{r['host_us_per_call']} us")
    return out


def torch_capability(device) -> tuple:
    import torch

    return torch.cuda.get_device_capability(device)


def _case_dict(case) -> dict:
    return dict(B=case.B, K=case.K, V=case.V, dtype=case.dtype_name, mode=case.mode)


def run_launches(cases, timer, state, args, path: Path, started: float) -> list[dict]:
    """Where the time goes in the goal `cases`: writes ``launches_<gpu>.csv`` (flushed per case), prints the rows."""
    from specsampler import triton_kernels as kernels

    providers = [("specsampler", kernels)] + ([("baseline", state["baseline"])] if state["baseline"] else [])
    device = state["torch_device"]
    if device.type == "cuda" and kernels.gdc_wait is not None and torch_capability(device)[0] >= 9:
        providers.append((PDL_PROVIDER, kernels))  # decides whether PDL becomes the default
    rows: list[dict] = []
    print("\nwhere the time goes (goal cases):\n" + launch_table_lines([])[0], flush=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LAUNCH_COLUMNS)
        writer.writeheader()
        for case in cases:
            if time.monotonic() - started > args.budget_seconds:
                state["notes"].add("budget spent during the launches table")
                break
            try:
                new = launch_case(case, providers, timer, state, args)
            except KeyboardInterrupt:
                state["notes"].add("interrupted during the launches table")
                break
            except Exception as exc:  # the inputs did not fit, or the device is gone: the grid still runs
                state["notes"].add(f"launches stopped at {_label(_case_dict(case))}: {type(exc).__name__}: "
                                   f"{str(exc)[:200]}")
                break
            writer.writerows(new)
            f.flush()
            for line in launch_table_lines(new)[1:]:
                print(line, flush=True)
            rows += new
    return rows


def run_warped(timer, state, args, path: Path, started: float) -> list[dict]:
    """The warped case (see the module docstring): writes ``warped_<gpu>.csv`` (flushed per B), prints the rows."""
    import torch
    from warp_peers import SAMPLE_PEER, VERIFY_PEER, WARP, sample_fns, torch_warpers, verify_fns, warped_inputs

    device, notes = state["torch_device"], state["notes"]
    sizes = DRY_WARPED if args.dry_run else WARPED
    k, vocab = sizes["K"], sizes["V"]
    warp, where = torch_warpers(**WARP)
    notes.add(f"warped case: temperature {WARP['temperature']}, top_k {WARP['top_k']}, top_p {WARP['top_p']}, "
              f"float32; peers: {where} warpers, then specsampler.verify (Triton) or torch.multinomial")
    rows: list[dict] = []
    print("\nwarped case:\n" + warped_table_lines([])[0], flush=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=WARPED_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for batch in sizes["B"]:
            if time.monotonic() - started > args.budget_seconds:
                notes.add("budget spent during the warped case")
                break
            try:
                inputs = warped_inputs(batch, k, vocab, device, seed=batch * 7919 + vocab, warp=warp)
            except Exception as exc:  # out of memory: the grid still runs
                notes.add(f"warped case stopped at B={batch}: {type(exc).__name__}: {str(exc)[:200]}")
                if device.type == "cuda":
                    _recover(torch)
                break
            new = []
            for what, fns, peer, nbytes in (("verify", verify_fns, VERIFY_PEER, 4 * batch * (2 * k + 1) * vocab),
                                            ("sample", sample_fns, SAMPLE_PEER, 4 * batch * vocab)):
                calls = fns(inputs, "triton", warp)
                calls = {"specsampler": calls["specsampler"], "torch": fns(inputs, "torch", warp)["specsampler"],
                         peer: calls[peer]}
                timed = {}
                for provider, fn in calls.items():
                    label = f"warped {what} {provider}"
                    try:
                        timed[provider] = timer(fn, nbytes <= args.graph_mib * 2**20, label=label)
                    except Exception as exc:  # OOM, a peer's bug, ours: note it, go on
                        _failed(state, notes, f"{label} failed on B={batch} K={k} V={vocab}", exc,
                                provider == "specsampler", device)
                ours = timed.get("specsampler")
                for provider, (ms, how) in timed.items():
                    ratio = _sig(ms / ours[0]) if ours and provider == peer else ""
                    new.append(dict(device=state["device"], what=what, B=batch, K=k, V=vocab, dtype="float32",
                                    provider=provider, median_us=_sig(ms * 1e3), peer_over_ours=ratio, how=how))
            del inputs
            writer.writerows(new)
            f.flush()
            for line in warped_table_lines(new)[1:]:
                print(line, flush=True)
            rows += new
    return rows


def methods_inputs(batch: int, k: int, vocab: int, device, seed: int) -> dict:
    """verify()'s inputs for the methods case: bfloat16 target logits, a draft close to them (so that drafts are
    accepted often and block verification's candidate rows are raced), drafts sampled from the draft, [B] seeds."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    target = torch.randn(batch, k + 1, vocab, generator=g) * 2.0
    draft = target[:, :k] + 0.7 * torch.randn(batch, k, vocab, generator=g)
    drafts = (draft + torch.empty_like(draft).exponential_(generator=g).log().neg()).argmax(-1)
    return dict(target_logits=target.to(torch.bfloat16).to(device), draft_tokens=drafts.to(device),
                draft_logits=draft.to(torch.bfloat16).to(device),
                seed=torch.arange(batch, dtype=torch.int64, device=device) + seed)


def tree_parents(branching) -> list[int]:
    """The parents of a tree drafted `branching[d]` children per node at depth d, level by level (-1: the root)."""
    parents, frontier = [], [-1]
    for width in branching:
        level = []
        for parent in frontier:
            level += [len(parents) + j for j in range(width)]
            parents += [parent] * width
        frontier = level
    return parents


def tree_inputs(batch: int, branching, vocab: int, device, seed: int) -> dict:
    """verify_tree()'s inputs for the tree case, built as methods_inputs builds the chain's (target logits, a draft
    close to them): for each node, the target's and the draft's rows after its path; the children of a node are the
    draft's top tokens there (point masses, ``top_tokens``), i.i.d. draws from it (``iid_tokens``) or draws without
    replacement (Gumbel-top-k of its row, ``wor_tokens``)."""
    import torch

    parents = tree_parents(branching)
    n = len(parents)
    g = torch.Generator(device="cpu").manual_seed(seed)
    target = torch.randn(batch, n + 1, vocab, generator=g) * 2.0
    draft = target + 0.7 * torch.randn(batch, n + 1, vocab, generator=g)
    rows = torch.tensor(parents) + 1  # the draft row each node was drawn from
    rank = torch.tensor([sum(1 for q in parents[:i] if q == parents[i]) for i in range(n)])  # among its siblings
    top = draft.topk(max(branching), dim=-1).indices  # [B, N+1, max width]
    top_tokens = top[:, rows, rank]
    gumbel = torch.empty(batch, n, vocab).exponential_(generator=g).log().neg()
    iid_tokens = (draft[:, rows] + gumbel).argmax(-1)
    del gumbel
    keys = draft + torch.empty_like(draft).exponential_(generator=g).log().neg()
    wor_tokens = keys.topk(max(branching), dim=-1).indices[:, rows, rank]
    del keys
    as_device = dict(dtype=torch.bfloat16, device=device)
    return dict(target_logits=target.to(**as_device), draft_logits=draft.to(**as_device),
                tree_parents=torch.tensor(parents, device=device).repeat(batch, 1), top_tokens=top_tokens.to(device),
                iid_tokens=iid_tokens.to(device), wor_tokens=wor_tokens.to(device),
                seed=torch.arange(batch, dtype=torch.int64, device=device) + seed,
                max_depth=len(branching))


METHOD_VARIANTS = dict(block=dict(token={}, block=dict(method="block")),
                       logprobs=dict(token={}, logprobs=dict(return_logprobs=True)),
                       tree={"token": {}, "tree-top": dict(draft_logits=None), "tree-iid": {},
                             "tree-wor": dict(draft_sampling="without_replacement"),
                             "trav-top": dict(draft_logits=None, method="traversal"),
                             "trav-iid": dict(method="traversal"),
                             "trav-wor": dict(draft_sampling="without_replacement", method="traversal")})


def _method_call(what: str, variant: str, options: dict, inputs: dict):
    """The timed call of a methods-case variant: verify() on the chain's inputs, verify_tree() on the tree's."""
    import specsampler

    if what != "tree":
        return lambda: specsampler.verify(**inputs, backend="triton", **options)
    if variant == "token":  # the chain K = 4 on the same sizes, for scale
        return lambda: specsampler.verify(**inputs["chain"], backend="triton")
    tree = {k: v for k, v in inputs.items() if k not in ("chain", "top_tokens", "iid_tokens", "wor_tokens")}
    tokens = inputs[variant.split("-")[1] + "_tokens"]  # (tree-top, trav-iid, ...: the candidates)
    return lambda: specsampler.verify_tree(**dict(tree, **options), tree_tokens=tokens, backend="triton")


def run_methods(timer, state, args, path: Path, started: float) -> list[dict]:
    """The methods case (see the module docstring): writes ``methods_<gpu>.csv`` (flushed per B), prints the rows."""
    device, notes = state["torch_device"], state["notes"]
    sizes = DRY_METHODS if args.dry_run else METHODS
    k, vocab = sizes["K"], sizes["V"]
    rows: list[dict] = []
    print("\nmethods case:\n" + methods_table_lines([])[0], flush=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METHODS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for what in ("block", "logprobs", "tree"):
            for batch in sizes[what]:
                if time.monotonic() - started > args.budget_seconds:
                    notes.add(f"budget spent during the methods case ({what}, B={batch})")
                    break
                try:
                    inputs = methods_inputs(batch, k, vocab, device, seed=batch * 31 + vocab)
                    if what == "tree":
                        inputs = dict(tree_inputs(batch, sizes["TREE"], vocab, device, seed=batch * 37 + vocab),
                                      chain=inputs)
                except Exception as exc:  # out of memory: the grid still runs
                    notes.add(f"methods case stopped at B={batch}: {type(exc).__name__}: {str(exc)[:200]}")
                    if device.type == "cuda":
                        import torch

                        _recover(torch)
                    break
                nodes = len(tree_parents(sizes["TREE"])) if what == "tree" else k
                nbytes = 2 * batch * (2 * nodes + 2 if what == "tree" else 2 * k + 1) * vocab
                timed, accepted = {}, {}
                for variant, options in METHOD_VARIANTS[what].items():
                    label = f"methods {what} {variant}"
                    call = _method_call(what, variant, options, inputs)
                    try:
                        accepted[variant] = float(call().num_accepted.float().mean())
                        timed[variant] = timer(call, nbytes <= args.graph_mib * 2**20, label=label)
                    except Exception as exc:  # ours: note it, go on
                        _failed(state, notes, f"{label} failed on B={batch} K={k} V={vocab}", exc, True, device)
                token = timed.get("token")
                new = [dict(device=state["device"], what=what, B=batch, K=k if variant == "token" else nodes,
                            V=vocab, dtype="bfloat16",
                            variant=variant, median_us=_sig(ms * 1e3),
                            over_token=_sig(ms / token[0]) if token and variant != "token" else "",
                            accepted=_sig(accepted[variant]), how=how, over_tree=_over_tree(variant, ms, timed))
                       for variant, (ms, how) in timed.items()]
                del inputs
                writer.writerows(new)
                f.flush()
                for line in methods_table_lines(new)[1:]:
                    print(line, flush=True)
                rows += new
    return rows


def _over_tree(variant: str, ms: float, timed: dict):
    """A traversal variant's median over the token rule's on the same candidates (trav-iid over tree-iid); ''."""
    token_rule = timed.get(variant.replace("trav-", "tree-")) if variant.startswith("trav-") else None
    return _sig(ms / token_rule[0]) if token_rule else ""


def methods_table_lines(rows: list[dict]) -> list[str]:
    """The methods table: header, then one line per (what, B, variant): the median (us; * = CUDA graph), its ratio
    to token verification's, the mean accepted drafts, and a traversal's ratio to the token rule on its tree."""
    out = [f"{'what':<9} {'B':>4} {'K':>2} {'V':>7} {'variant':<9} {'median_us':>10} {'over_token':>10} "
           f"{'accepted':>8} {'over_tree':>9}"]
    for r in rows:
        star = "*" if r["how"] == "graph" else ""
        out.append(f"{r['what']:<9} {r['B']:>4} {r['K']:>2} {r['V']:>7} {r['variant']:<9} "
                   f"{str(r['median_us']) + star:>10} {str(r['over_token']):>10} {str(r['accepted']):>8} "
                   f"{str(r.get('over_tree', '')):>9}")
    return out


def warped_table_lines(rows: list[dict]) -> list[str]:
    """The warped table: header, then one line per (what, B): each provider's median (us; * = CUDA graph) and the
    peer's over ours."""
    from warp_peers import SAMPLE_PEER, VERIFY_PEER

    head = (f"{'what':<7} {'B':>4} {'K':>2} {'V':>7} {'specsampler':>12} {'torch':>10} {'peer':>10} "
            f"{'peer/ours':>9}  peer")
    out = [head]
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault((r["what"], r["B"], r["K"], r["V"]), {})[r["provider"]] = r
    for (what, b, k, v), by in cases.items():
        peer = VERIFY_PEER if what == "verify" else SAMPLE_PEER
        ratio = by.get(peer, {}).get("peer_over_ours", "")
        out.append(f"{what:<7} {b:>4} {k:>2} {v:>7} {_cell(by.get('specsampler')):>12} {_cell(by.get('torch')):>10} "
                   f"{_cell(by.get(peer)):>10} {(f'{ratio:.2f}x' if ratio != '' else '-'):>9}  {peer}")
    return out


def launch_table_lines(rows: list[dict]) -> list[str]:
    """The launches table: header, then one line per row (µs; % of the read roofline and of the copy ceiling)."""
    cols = (("launch1_us", "launch1"), ("launch2_us", "launch2"), ("total_cuda_us", "cuda"), ("graph_us", "graph"),
            ("host_us_per_call", "host"), ("host_pre_us", "h.pre"), ("host_launch1_us", "h.l1"),
            ("host_between_us", "h.betw"), ("host_launch2_us", "h.l2"), ("host_post_us", "h.post"),
            ("read_roofline_us", "read"), ("pct_of_read_roofline", "%read"), ("pct_of_copy_bw", "%copy"))
    head = f"{'B':>4} {'K':>2} {'V':>7} {'dtype':<8} {'mode':<7} {'provider':<11}"
    out = [head + "".join(f" {title:>8}" for _, title in cols) + f" {'bound':>5}"]
    for r in rows:
        line = f"{r['B']:>4} {r['K']:>2} {r['V']:>7} {r['dtype']:<8} {r['mode']:<7} {r['provider']:<11}"
        line += "".join(f" {_num(r[c]):>8}" for c, _ in cols)
        gpu = r["total_cuda_us"] if r["total_cuda_us"] != "" else r["graph_us"]
        out.append(line + f" {'host' if r['host_us_per_call'] >= gpu else 'gpu':>5}")
    return out


def _num(x) -> str:
    if x == "":
        return "-"
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


class Notes:
    """Printed notes, each once."""

    def __init__(self):
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if line and line not in self.lines:
            self.lines.append(line)
            print(f"note: {line}", flush=True)


def run_case(case, device, providers, timer, notes, state, args) -> list[dict]:
    """Time every provider on one case; returns the result rows (with 'how' for the table)."""
    from devcheck_providers import Unavailable, build, make_inputs

    inputs = make_inputs(case, device, seed=case_seed(case))
    nbytes = min_bytes(case)
    graph = nbytes <= args.graph_mib * 2**20
    compile_backend = "eager" if args.dry_run else "inductor"
    rows = []
    for provider in providers:
        if provider in state["dropped"]:
            continue
        try:
            built = build(provider, case, inputs, row_cap=args.row_cap, compile_backend=compile_backend,
                          baseline=state["baseline"])
            notes.add(built.note)
            t0 = time.perf_counter()
            ms, how = timer(built.fn, graph, label=provider)
            if provider == "torch_compile":
                _charge_compile(state, time.perf_counter() - t0, args, notes)
        except Unavailable as exc:
            notes.add(str(exc))
            continue
        except Exception as exc:  # OOM, a peer's bug, ours: note it, go on
            _failed(state, notes, f"{provider} failed on B={case.B} K={case.K} V={case.V} {case.dtype_name} "
                    f"{case.mode}", exc, provider == "specsampler", device)
            continue
        rows.append(result_row(case, provider, ms * built.scale, nbytes, state["copy_gbps"], state["device"], how))
    del inputs
    return rows


def _failed(state, notes, what: str, exc: Exception, ours: bool, device) -> None:
    """Note a failed timing (`what`, then the exception), count it when it is specsampler's own, and free the GPU."""
    notes.add(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
    state["failures"] += ours
    if device.type == "cuda":
        import torch

        _recover(torch)


def _recover(torch) -> None:
    """Free what a failed call left behind; a sticky CUDA error re-raises here and stops the run."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _charge_compile(state, seconds, args, notes) -> None:
    state["compile_s"] += seconds
    if state["compile_s"] > args.compile_budget_seconds:
        state["dropped"].add("torch_compile")
        notes.add(f"torch_compile dropped after {state['compile_s']:.0f} s of compilation and timing "
                  f"(--compile-budget-seconds {args.compile_budget_seconds:g}); later cases have no torch_compile row")


def result_row(case, provider, ms, nbytes, copy_gbps, device, how) -> dict:
    gbps = nbytes / (ms * 1e-3) / 1e9
    return dict(device=device, B=case.B, K=case.K, V=case.V, dtype=case.dtype_name, provider=provider,
                median_us=_sig(ms * 1e3), bytes=nbytes, gbps=_sig(gbps), pct_of_copy_bw=_sig(100 * gbps / copy_gbps),
                mode=case.mode, how=how)


def _sig(x: float) -> float:
    """Six significant digits (tiny dry-run bandwidths stay positive)."""
    return float(f"{x:.6g}")


def goal_lines(rows: list[dict], report) -> list[str]:
    """The README's goals (stated for an H100), checked on what was measured."""
    ours = {_key(r): r for r in rows if r["provider"] == "specsampler"}
    out = []
    bw = [r for r in ours.values() if r["B"] >= 64 and r["V"] == 128256]
    low = [f"{_label(r)} {r['pct_of_copy_bw']:.0f}%" for r in bw if r["pct_of_copy_bw"] < 80]
    out.append(_goal("1 >= 80% of copy bandwidth, B >= 64, V = 128256", bw, low))
    small = [r for r in ours.values() if (r["B"], r["K"], r["V"]) == (1, 4, 128256)]
    slow = [f"{_label(r)} {r['median_us']:.1f} us" for r in small if r["median_us"] > 15]
    out.append(_goal("2 <= 15 us at B = 1, K = 4, V = 128256", small, slow))
    peers = [r for r in rows if r["provider"] not in ("specsampler", "baseline") and _key(r) in ours]
    beaten = [f"{_label(r)} by {r['provider']} ({r['median_us']:.1f} < {ours[_key(r)]['median_us']:.1f} us)"
              for r in peers if r["median_us"] < ours[_key(r)]["median_us"]]
    out.append(_goal("3 faster than every peer", peers, beaten))
    hf = [r for r in peers if r["provider"] == "transformers" and r["B"] == 64]
    short = [f"{_label(r)} {r['median_us'] / ours[_key(r)]['median_us']:.1f}x" for r in hf
             if r["median_us"] < 20 * ours[_key(r)]["median_us"]]
    out.append(_goal("4 >= 20x faster than transformers at B = 64", hf, short))
    spills = [f"{r['kernel']} {r['config']} {r['constexprs']}: {r['n_spills']}" for r in report.spills()]
    out.append(_goal("5 no register spills", report.rows, spills))
    return out


def _key(r):
    return r["B"], r["K"], r["V"], r["dtype"], r["mode"]


def _label(r):
    return f"B={r['B']} K={r['K']} V={r['V']} {r['dtype']} {r['mode']}"


def _goal(title: str, checked: list, misses: list[str]) -> str:
    if not checked:
        return f"GOAL {title}: not measured"
    verdict = "met" if not misses else f"MISSED in {len(misses)} of {len(checked)}: " + "; ".join(misses[:6])
    return f"GOAL {title}: {verdict}" + (" ..." if len(misses) > 6 else "")


def baseline_lines(rows: list[dict], path: str | None) -> list[str]:
    """How the current kernel compares with the baseline's, over the cases both ran."""
    if not path:
        return []
    ours = {_key(r): r for r in rows if r["provider"] == "specsampler"}
    ratios = sorted(r["median_us"] / ours[_key(r)]["median_us"] for r in rows
                    if r["provider"] == "baseline" and _key(r) in ours)
    if not ratios:
        return [f"BASELINE {path}: not measured"]
    faster = sum(x > 1 for x in ratios)
    return [f"BASELINE {path}: ours faster in {faster} of {len(ratios)} cases; baseline / ours: median "
            f"{statistics.median(ratios):.2f}x, range {ratios[0]:.2f}x to {ratios[-1]:.2f}x"]


def table_lines(rows: list[dict], providers) -> list[str]:
    """One line per case: each provider's median (us; * = CUDA graph), ours in GB/s and % of copy, best speedup
    (over the peers; the baseline is not one) and, with a baseline, the baseline's median over ours."""
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault(_key(r), {})[r["provider"]] = r
    with_baseline = "baseline" in providers
    head = f"{'B':>4} {'K':>2} {'V':>7} {'dtype':<8} {'mode':<7}" + "".join(f"{p:>14}" for p in providers)
    head += f" {'GB/s':>9} {'%copy':>6} {'vs best peer':>12}" + (f" {'vs baseline':>12}" if with_baseline else "")
    out = [head]
    for key, by in cases.items():
        line = f"{key[0]:>4} {key[1]:>2} {key[2]:>7} {key[3]:<8} {key[4]:<7}"
        line += "".join(f"{_cell(by.get(p)):>14}" for p in providers)
        ours = by.get("specsampler")
        peer = min((r["median_us"] for p, r in by.items() if p not in ("specsampler", "baseline")), default=None)
        if ours:
            line += f" {ours['gbps']:>9.4g} {ours['pct_of_copy_bw']:>6.3g}"
            line += f" {peer / ours['median_us']:>11.1f}x" if peer else f" {'-':>12}"
            if with_baseline:
                old = by.get("baseline")
                line += f" {old['median_us'] / ours['median_us']:>11.2f}x" if old else f" {'-':>12}"
        out.append(line)
    return out


def _cell(r) -> str:
    if r is None:
        return "-"
    return f"{r['median_us']:.6g}" + ("*" if r["how"] == "graph" else "")


def write_resources(path: Path, report) -> None:
    from devcheck_resources import COLUMNS as RES_COLUMNS

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RES_COLUMNS)
        writer.writeheader()
        writer.writerows(report.rows)


def load_baseline_or_note(path: str | None, notes: Notes):
    """The baseline kernel module, or None (with a note when it was asked for and does not load)."""
    if not path:
        return None
    from devcheck_providers import load_baseline

    try:
        module = load_baseline(path)
    except Exception as exc:  # a bad path or an incompatible file: run without it, loudly
        notes.add(f"BASELINE NOT LOADED from {path}: {type(exc).__name__}: {str(exc)[:300]}")
        return None
    notes.add(f"baseline: the kernel module of {path}, timed as provider 'baseline'")
    return module


def select_providers(args, baseline) -> tuple:
    from devcheck_providers import BASELINE, PROVIDERS

    chosen = PROVIDERS if args.providers == "all" else tuple(p for p in PROVIDERS if p in args.providers.split(","))
    return chosen + ((BASELINE,) if baseline is not None else ())


def run_grid(cases, device, providers, timer, state, args, csv_path: Path, started: float) -> list[dict]:
    """Time every provider on every case until the budget is spent; writes the verify CSV (flushed per case)."""
    notes, report = state["notes"], state["report"]
    rows: list[dict] = []
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        f.flush()
        for i, case in enumerate(cases):
            if time.monotonic() - started > args.budget_seconds:
                notes.add(f"budget of {args.budget_seconds:g} s spent: timed {i} of {len(cases)} cases")
                break
            try:
                new = run_case(case, device, providers, timer, notes, state, args)
            except KeyboardInterrupt:
                notes.add(f"interrupted: timed {i} of {len(cases)} cases")
                break
            except Exception as exc:  # the inputs did not fit, or the device is gone: keep what was measured
                notes.add(f"stopped at case {i} of {len(cases)} ({case}): {type(exc).__name__}: {str(exc)[:200]}")
                state["failures"] += 1
                break
            writer.writerows(new)
            f.flush()
            rows += new
            if device.type == "cuda":
                report.collect(f"{case.dtype_name}/{case.mode}")
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported
    from devcheck_bootstrap import ensure_importable

    where = ensure_importable()
    if os.environ.get("TRITON_INTERPRET") == "1":  # the dry run: the interpreter without its re-patching (about 2x)
        from specsampler._interpret import skip_repatching

        skip_repatching()
    import torch
    from devcheck_plot import write_plot
    from devcheck_resources import ResourceReport

    started = time.monotonic()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        print("no CUDA device: use --dry-run on a CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = device_name(device)
    print(f"specsampler from {where}; torch {torch.__version__}; device {name}; out {out}", flush=True)

    notes, report = Notes(), ResourceReport()
    baseline = load_baseline_or_note(args.baseline_kernel, notes)
    providers = select_providers(args, baseline)
    timer = Timer(device, args, notes)
    copy_gbps = copy_ceiling(device, timer, args.dry_run)
    print(f"copy ceiling: {copy_gbps:.1f} GB/s (read + written)", flush=True)
    read_gbps = read_ceiling(device, timer, args.dry_run)
    print(f"read ceiling: {read_gbps:.4g} GB/s (read only, a plain Triton read and sum)", flush=True)
    state = dict(copy_gbps=copy_gbps, device=name, failures=0, compile_s=0.0, dropped=set(), notes=notes,
                 report=report, baseline=baseline, torch_device=device)
    if args.dry_run:
        notes.add("dry run: CPU, tiny sizes, the kernel interpreted; wall-clock medians, not do_bench")
    cases = grid(args)
    launches_path = out / f"launches_{slug(name)}.csv"
    launches = [] if args.skip_launches else run_launches([c for c in cases if is_goal(c, args)], timer, state,
                                                            args, launches_path, started)
    warped_path = out / f"warped_{slug(name)}.csv"
    warped = [] if args.skip_warped else run_warped(timer, state, args, warped_path, started)
    methods_path = out / f"methods_{slug(name)}.csv"
    methods = [] if args.skip_methods else run_methods(timer, state, args, methods_path, started)
    csv_path = out / f"verify_{slug(name)}.csv"
    rows = run_grid(cases, device, providers, timer, state, args, csv_path, started)
    write_resources(out / f"resources_{slug(name)}.csv", report)
    plot_path = out / f"verify_{slug(name)}.png"
    try:
        plot_line = write_plot(str(plot_path), rows, copy_gbps, f"specsampler.verify on {name}")
    except Exception as exc:  # never lose the table to the plot
        plot_line = f"no plot: {type(exc).__name__}: {exc}"
    if plot_line.startswith("no plot"):
        notes.add(plot_line)

    print(f"\nwrote {csv_path} ({len(rows)} rows), {launches_path.name} ({len(launches)} rows), "
          f"{warped_path.name} ({len(warped)} rows), {methods_path.name} ({len(methods)} rows), "
          f"resources_{slug(name)}.csv; {plot_line}; "
          f"{time.monotonic() - started:.0f} s")
    print(f"copy ceiling: {copy_gbps:.1f} GB/s (read + written); read ceiling: {read_gbps:.4g} GB/s (read only)")
    print("\n".join(["", *(f"note: {n}" for n in notes.lines), ""]))
    if launches:
        print("where the time goes (us; launch1/launch2/cuda: CUDA time per call; graph: the call as a CUDA graph; "
              "host: host time per eager call, h.*: its phases; read: the read roofline of launch 1's bytes; "
              "bound: the longer of host and GPU time)\n")
        print("\n".join([*launch_table_lines(launches), *pdl_lines(launches), ""]))
    if warped:
        print("warped case (us; * = timed as a CUDA graph; peer/ours: the peer's median over specsampler's)\n")
        print("\n".join([*warped_table_lines(warped), ""]))
    if methods:
        print("methods case (us; * = timed as a CUDA graph; over_token: the variant's median over token "
              "verification's; accepted: mean drafts accepted per row)\n")
        print("\n".join([*methods_table_lines(methods), ""]))
    print("\n".join(report.lines()))
    print("\n".join(["", *goal_lines(rows, report), *baseline_lines(rows, args.baseline_kernel), ""]))
    print("table: median us per provider (* = timed as a CUDA graph); ours in GB/s and % of the copy ceiling; "
          "the best peer's time over ours\n")
    print("\n".join(table_lines(rows, [p for p in providers if any(r["provider"] == p for r in rows)])))
    if state["failures"]:
        print(f"\nFAILED: specsampler raised on {state['failures']} case(s); see the notes", file=sys.stderr)
    return 1 if state["failures"] or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
