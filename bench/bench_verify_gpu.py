"""Microbenchmarks of ``specsampler.verify`` against its peers, and the copy-bandwidth roofline.

Run by ``bench/device_check.sh`` (which runs the test suite first); standalone::

    python3 bench/bench_verify_gpu.py [--quick] [--budget-seconds S] [--out DIR]
    python3 bench/bench_verify_gpu.py --dry-run     # CPU, tiny sizes, the kernel under TRITON_INTERPRET=1

Grid: B in {1, 8, 64, 256}, K in {1, 4, 8}, V in {32000, 128256, 151936, 262144}, float32 and bfloat16 logits,
sampled (temperature 1) and greedy (temperature 0) rows; V = 128256 first, as the goals are stated there. Every case
gets fresh random inputs, identical for every provider (see ``devcheck_providers`` for what each one runs).

Timing: ``triton.testing.do_bench`` medians (short warmup and rep), or ``do_bench_cudagraph`` medians when the case
reads at most ``--graph-mib`` MiB and the provider runs without a host synchronisation (checked with
``torch.cuda.set_sync_debug_mode``) and captures; on a CPU a wall-clock median of a few calls.

Bytes, the least a verification must read, with s the element size of the logits:

    sampled rows:  s * B * ((K+1)*V + K*V + 2*V)   every target and draft logit once, plus the residual row pair
                                                   (p_n and q_n) read again to draw the correction
    greedy rows:   s * B * (K+1)*V                 the target's logits once (the draft's are never needed)

``gbps = bytes / median`` (1e9 bytes/s) and ``pct_of_copy_bw = 100 * gbps / copy_gbps``, where ``copy_gbps`` is the
measured ceiling: a 1 GiB device-to-device ``copy_``, counting bytes read plus written.

Outputs, under ``--out`` (default ``$OUT``, else ``bench/out``), the CSV flushed after every case so that a run cut
short keeps what it measured:
- ``verify_<gpu>.csv``: ``device, B, K, V, dtype, provider, median_us, bytes, gbps, pct_of_copy_bw, mode``, one row
  per provider and case (``mode``, sampled or greedy, is the one column beyond the issue's list, kept last);
- ``resources_<gpu>.csv``: registers and spills of every compiled variant of the two kernels;
- ``verify_<gpu>.png``: the roofline plot;
- printed: notes (skipped providers and why, scaled timings), the copy ceiling, the goals, the resource report, and
  the table last.
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
FULL = dict(B=(1, 8, 64, 256), K=(1, 4, 8), V=(128256, 32000, 151936, 262144))
QUICK = dict(B=(1, 64), K=(4,), V=(128256,))
DRY = dict(B=(1, 2), K=(1, 2), V=(7, 1000))


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
    args = p.parse_args(argv)
    if args.compile_budget_seconds is None:
        args.compile_budget_seconds = 8.0 if args.dry_run else 60.0
    return args


def grid(args) -> list:
    """The cases, in the order they are timed (the goals' V first)."""
    import torch
    from devcheck_providers import Case

    sizes = DRY if args.dry_run else QUICK if args.quick else FULL
    return [Case(b, k, v, dtype, mode)
            for v in sizes["V"] for dtype in (torch.float32, torch.bfloat16) for mode in ("sampled", "greedy")
            for b in sizes["B"] for k in sizes["K"]]


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
    import torch
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
            built = build(provider, case, inputs, row_cap=args.row_cap, compile_backend=compile_backend)
            notes.add(built.note)
            t0 = time.perf_counter()
            ms, how = timer(built.fn, graph, label=provider)
            if provider == "torch_compile":
                _charge_compile(state, time.perf_counter() - t0, args, notes)
        except Unavailable as exc:
            notes.add(str(exc))
            continue
        except Exception as exc:  # OOM, a peer's bug, ours: note it, go on
            notes.add(f"{provider} failed on B={case.B} K={case.K} V={case.V} {case.dtype_name} {case.mode}: "
                      f"{type(exc).__name__}: {str(exc)[:200]}")
            state["failures"] += provider == "specsampler"
            if device.type == "cuda":
                _recover(torch)
            continue
        rows.append(result_row(case, provider, ms * built.scale, nbytes, state["copy_gbps"], state["device"], how))
    del inputs
    return rows


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
    peers = [r for r in rows if r["provider"] != "specsampler" and _key(r) in ours]
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


def table_lines(rows: list[dict], providers) -> list[str]:
    """One line per case: each provider's median (us; * = CUDA graph), ours in GB/s and % of copy, best speedup."""
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault(_key(r), {})[r["provider"]] = r
    head = f"{'B':>4} {'K':>2} {'V':>7} {'dtype':<8} {'mode':<7}" + "".join(f"{p:>14}" for p in providers)
    out = [head + f" {'GB/s':>9} {'%copy':>6} {'vs best peer':>12}"]
    for key, by in cases.items():
        line = f"{key[0]:>4} {key[1]:>2} {key[2]:>7} {key[3]:<8} {key[4]:<7}"
        line += "".join(f"{_cell(by.get(p)):>14}" for p in providers)
        ours = by.get("specsampler")
        peer = min((r["median_us"] for p, r in by.items() if p != "specsampler"), default=None)
        if ours:
            line += f" {ours['gbps']:>9.4g} {ours['pct_of_copy_bw']:>6.3g}"
            line += f"{peer / ours['median_us']:>11.1f}x" if peer else f"{'-':>12}"
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported
    from devcheck_bootstrap import ensure_importable

    where = ensure_importable()
    import torch
    from devcheck_plot import AXES, write_plot
    from devcheck_providers import PROVIDERS
    from devcheck_resources import ResourceReport

    started = time.monotonic()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        print("no CUDA device: use --dry-run on a CPU", file=sys.stderr)
        return 2
    providers = PROVIDERS if args.providers == "all" else tuple(p for p in PROVIDERS if p in args.providers.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = device_name(device)
    print(f"specsampler from {where}; torch {torch.__version__}; device {name}; out {out}", flush=True)

    notes, report = Notes(), ResourceReport()
    timer = Timer(device, args, notes)
    copy_gbps = copy_ceiling(device, timer, args.dry_run)
    print(f"copy ceiling: {copy_gbps:.1f} GB/s (read + written)", flush=True)
    state = dict(copy_gbps=copy_gbps, device=name, failures=0, compile_s=0.0, dropped=set())
    if args.dry_run:
        notes.add("dry run: CPU, tiny sizes, the kernel interpreted; wall-clock medians, not do_bench")
    cases = grid(args)
    rows: list[dict] = []
    csv_path = out / f"verify_{slug(name)}.csv"
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
    write_resources(out / f"resources_{slug(name)}.csv", report)
    plot_path = out / f"verify_{slug(name)}.png"
    try:
        how = write_plot(str(plot_path), rows, copy_gbps, f"specsampler.verify on {name}")
    except Exception as exc:  # never lose the table to the plot
        how = f"failed: {type(exc).__name__}: {exc}"
    if how.startswith("raster"):
        notes.add(f"plot drawn without matplotlib (a labelled raster): {AXES}")

    print(f"\nwrote {csv_path} ({len(rows)} rows), {plot_path} ({how}), resources_{slug(name)}.csv; "
          f"{time.monotonic() - started:.0f} s")
    print(f"copy ceiling: {copy_gbps:.1f} GB/s")
    print("\n".join(["", *(f"note: {n}" for n in notes.lines), ""]))
    print("\n".join(report.lines()))
    print("\n".join(["", *goal_lines(rows, report), ""]))
    print("table: median us per provider (* = timed as a CUDA graph); ours in GB/s and % of the copy ceiling; "
          "the best peer's time over ours\n")
    print("\n".join(table_lines(rows, [p for p in providers if any(r["provider"] == p for r in rows)])))
    if state["failures"]:
        print(f"\nFAILED: specsampler raised on {state['failures']} case(s); see the notes", file=sys.stderr)
    return 1 if state["failures"] or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
