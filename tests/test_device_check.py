"""The device check (bench/device_check.sh) runs before any GPU minute is spent: its dry run, and its helpers."""

import csv
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
COLUMNS = ["device", "B", "K", "V", "dtype", "provider", "median_us", "bytes", "gbps", "pct_of_copy_bw"]
ON_CPU = {"specsampler", "torch", "torch_compile", "transformers"}  # flashinfer needs CUDA

sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Runs ``bench/device_check.sh --dry-run`` once, with OUT in a temporary folder."""
    if os.environ.get("DEVICE_CHECK_RUNNING") == "1":
        pytest.skip("inside the device check itself: its dry run would only spend the GPU window")
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    out = tmp_path_factory.mktemp("device_check")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(BENCH / "device_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return SimpleNamespace(out=out, proc=proc, log=proc.stdout + proc.stderr)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_dry_run_succeeds(dry_run):
    assert dry_run.proc.returncode == 0, dry_run.log[-4000:]


def test_dry_run_csv(dry_run):
    path = dry_run.out / "verify_cpu.csv"
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    assert header[: len(COLUMNS)] == COLUMNS
    rows = _csv(path)
    providers = {r["provider"] for r in rows}
    assert ON_CPU <= providers, providers
    cases = {(r["B"], r["K"], r["V"], r["dtype"], r["mode"]) for r in rows}
    assert len(cases) == 2 * 2 * 2 * 2 * 2  # B, K, V, dtype, sampled/greedy
    for provider in ("specsampler", "torch", "transformers"):
        assert sum(r["provider"] == provider for r in rows) == len(cases)
    for r in rows:
        assert r["device"] == "cpu"
        for column in ("median_us", "bytes", "gbps", "pct_of_copy_bw"):
            assert float(r[column]) > 0, (column, r)


def test_dry_run_plot_and_resources(dry_run):
    png = (dry_run.out / "verify_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (dry_run.out / "resources_cpu.csv").read_text().startswith("kernel,config")


def test_dry_run_prints_the_table_last(dry_run):
    bench_log = (dry_run.out / "bench.log").read_text().rstrip().splitlines()
    header = next(i for i, line in enumerate(bench_log) if line.split()[:3] == ["B", "K", "V"])
    assert len(bench_log) - header - 1 == 32  # one line per case, and nothing after the table
    assert any(line.startswith("GOAL ") for line in bench_log[:header])
    assert any("flashinfer" in line for line in bench_log if line.startswith("note:"))  # why it is left out


def test_min_bytes():
    from bench_verify_gpu import min_bytes
    from devcheck_providers import Case

    b, k, v = 8, 4, 1000
    assert min_bytes(Case(b, k, v, torch.bfloat16, "sampled")) == 2 * b * ((k + 1) * v + k * v + 2 * v)
    assert min_bytes(Case(b, k, v, torch.float32, "greedy")) == 4 * b * (k + 1) * v


def test_raster_png_decodes():
    import numpy as np
    from devcheck_plot import png_bytes

    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = png_bytes(img, {"Title": "x"})
    chunks, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    assert struct.unpack(">II", chunks[b"IHDR"][:8]) == (7, 5)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(5, 1 + 7 * 3)
    assert (raw[:, 0] == 0).all() and np.array_equal(raw[:, 1:].reshape(5, 7, 3), img)


def test_resource_report_reads_triton_caches():
    """Both cache layouts (device_caches tuples, Triton >= 3.2; cache dicts before), never raising."""
    from devcheck_resources import ResourceReport, _kernel_caches

    kernel = SimpleNamespace(n_regs=40, n_spills=0, metadata=SimpleNamespace(num_warps=8, shared=0),
                             src=SimpleNamespace(constants={(3,): 2048}, fn=SimpleNamespace(arg_names=list("abc") +
                                                                                             ["BLOCK_V"])))
    new = SimpleNamespace(device_caches={0: ({"key": kernel}, {}, None, None, None)})
    old = SimpleNamespace(cache={0: {"key": kernel}})
    assert _kernel_caches(new) == _kernel_caches(old) == [{"key": kernel}]
    report = ResourceReport()
    report._add("_verify_kernel", "float32/sampled", kernel)
    report._add("_verify_kernel", "float32/greedy", kernel)  # the same variant is reported once
    assert [(r["constexprs"], r["n_regs"], r["n_spills"]) for r in report.rows] == [("BLOCK_V=2048", 40, 0)]
    assert report.spills() == []


def test_timer_picks_graphs_only_for_sync_free_callables(monkeypatch):
    """The CUDA branch of the timer with do_bench stubbed: graphs for sync-free callables, a stream otherwise."""
    import triton.testing
    from bench_verify_gpu import Notes, Timer, parse_args

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    mode = {"value": 0}
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: mode.update(value=m))
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", lambda fn, **kw: calls.append(("graph", kw)) or 1.0)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: calls.append(("stream", kw)) or 2.0)

    def syncing():
        if mode["value"] == "error":
            raise RuntimeError("called a synchronizing CUDA operation")

    notes = Notes()
    timer = Timer(SimpleNamespace(type="cuda"), parse_args([]), notes)
    assert timer(lambda: None, graph=True, label="ours") == (1.0, "graph")
    assert timer(syncing, graph=True, label="peer") == (2.0, "stream")
    assert timer(lambda: None, graph=False) == (2.0, "stream")
    assert [c[0] for c in calls] == ["graph", "stream", "stream"]
    assert all(kw.get("return_mode") == "median" for _, kw in calls)
    assert any(line.startswith("peer: synchronises") for line in notes.lines)
