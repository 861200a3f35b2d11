"""bench/bench_host.py: the CPU benchmark of verify's host path (launches replaced by no-ops) and its clock."""

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

sys.path.insert(0, str(BENCH))


def test_split_call():
    """Phases from the launch marks; a launch not seen leaves its time to the phases beside it."""
    from bench_host import split_call

    both = split_call(0, 100, [(1, 10, 30), (2, 45, 80)])
    assert both == dict(pre=10, launch1=20, between=15, launch2=35, post=20)
    assert split_call(0, 100, [(2, 45, 80)]) == dict(pre=45, launch1=0, between=0, launch2=35, post=20)
    assert split_call(0, 100, [(1, 10, 30)]) == dict(pre=10, launch1=20, between=0, launch2=0, post=70)
    assert split_call(0, 100, []) == dict(pre=100, launch1=0, between=0, launch2=0, post=0)


class _Kernel:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def run(self, *args, grid, warmup, **kwargs):
        self.log.append(self.name)
        time.sleep(0.001)
        return self.name

    def __getitem__(self, grid):  # as triton's KernelInterface: kernel[grid](...) calls self.run
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)


def test_launch_clock_wraps_and_restores():
    """Timestamps around both kernels' .run (or no-ops instead of them); the class's run is back afterwards."""
    from bench_host import LaunchClock

    log = []
    module = SimpleNamespace(_row_stats_kernel=_Kernel(log, "stats"), _verify_kernel=_Kernel(log, "verify"))

    def call():
        return module._row_stats_kernel[(1,)](0), module._verify_kernel[(1,)](0)

    with LaunchClock(module) as clock:
        assert clock.call(call) == ("stats", "verify")
    assert log == ["stats", "verify"] and "run" not in vars(module._row_stats_kernel)
    record = clock.records[0]
    assert record["launches"] == 2 and record["launch1"] >= 1e6 and record["launch2"] >= 1e6
    assert sum(record[p] for p in ("pre", "launch1", "between", "launch2", "post")) == record["total"]
    with LaunchClock(module, noop=True) as clock:
        assert clock.call(call) == (None, None)
    assert log == ["stats", "verify"] and clock.records[0]["launch1"] < 1e6
    summary = clock.summary()
    assert summary["calls"] == summary["seen"] == 1 and summary["median_us"] > 0


def test_bench_host_runs_and_prints_its_table():
    """A tiny run: the header, one row per case with every column a positive number (or zero), the profile."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it itself
    proc = subprocess.run([sys.executable, str(BENCH / "bench_host.py"), "--calls", "20", "--warmup", "2",
                           "--profile", "--profile-top", "5"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("host path of specsampler.verify") and "launches replaced by no-ops" in lines[0]
    from bench_host import CASES, COLUMNS

    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["case"])
    assert lines[header].split() == list(COLUMNS)
    rows = [line.split() for line in lines[header + 1 : header + 1 + len(CASES)]]
    assert [(r[0], int(r[1])) for r in rows] == list(CASES)
    for r in rows:
        assert r[2:5] == ["4", "128256", "float32"]
        values = [float(x) for x in r[5:]]
        assert len(values) == len(COLUMNS) - 5 and min(values) >= 0 and values[0] > 0
    assert any(line.startswith("cProfile: 20 calls") for line in lines[header:])
    # (which functions lead the profile depends on the machine: only that it lists specsampler's own code)
    assert any("specsampler" in line or "triton_kernels" in line for line in lines[header:]), proc.stdout
