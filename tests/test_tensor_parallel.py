"""A target under transformers' tensor parallelism (``tp_plan="auto"``, torchrun, 2 CPU ranks over gloo).

Every rank of a split target must emit the same tokens, or the ranks' collectives desynchronise: greedy equals plain
``generate``, and sampled runs agree across ranks with a seed and without one (the seed rank 0 draws is broadcast).
tests/tp_worker.py is one rank; it gives each rank its own torch random state before sampling, so a seed drawn per
rank would differ. "tensor_parallel" loads the target with ``tp_plan="auto"`` (transformers needs accelerate for it:
skipped without); "replicated" gives every rank a whole copy of the target (data parallelism): there ranks with a seed
agree, and ranks without one stay independent (no collective).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from specsampler import _distributed

WORKER = pathlib.Path(__file__).resolve().parent / "tp_worker.py"
TIMEOUT_S = 180  # the run takes ~10 s on 2 CPU cores; a hang (ranks out of step) ends in gloo's 60 s timeout first


def _skip_reason(mode: str) -> str | None:
    if not torch.distributed.is_available():
        return "torch.distributed is not available in this torch build"
    if not torch.distributed.is_gloo_available():
        return "torch.distributed has no gloo backend in this torch build"
    if mode == "tensor_parallel" and importlib.util.find_spec("accelerate") is None:
        return "transformers' tensor parallelism (tp_plan) requires accelerate, which is not installed"
    return None


def _launch(out_dir: pathlib.Path, mode: str) -> tuple[int, str]:
    """torchrun, 2 local ranks (standalone rendezvous on localhost); its process group is killed on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max_restarts",
           "0", str(WORKER), str(out_dir), mode]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two workers, nothing else
        log, _ = proc.communicate()
        return -1, f"timed out after {TIMEOUT_S} s\n{log}"
    return proc.returncode, log


class _Run:
    """Both ranks' records (each rank writes its file after every mode) and, when torchrun failed, why."""

    def __init__(self, out_dir: pathlib.Path, mode: str, rc: int, log: str, seconds: float):
        self.mode = mode
        files = [out_dir / f"rank{r}.json" for r in range(2)]
        self.ranks = [json.loads(f.read_text()) if f.exists() else {} for f in files]
        self.failure = None
        if rc != 0:
            errors = [line for line in log.splitlines() if "Error" in line or "mismatch" in line]
            self.failure = (f"torchrun failed (rc {rc}) after {seconds:.0f} s; its errors:\n" + "\n".join(errors[-20:])
                            + f"\n--- log tail ---\n{log[-4000:]}")

    def __getitem__(self, key):
        """[rank 0's, rank 1's] `key`; fails (with torchrun's errors) when the run died before or during that mode."""
        if not all(key in r for r in self.ranks):
            done = [k for k in self.ranks[0] if all(k in r for r in self.ranks)]
            pytest.fail(f"no {key!r} from both ranks (completed: {done})\n{self.failure}")
        return [r[key] for r in self.ranks]


@pytest.fixture(scope="module", params=["tensor_parallel", "replicated"])
def run(request):
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="specsampler-tp-") as tmp:
        start = time.perf_counter()
        rc, log = _launch(pathlib.Path(tmp), request.param)
        yield _Run(pathlib.Path(tmp), request.param, rc, log, time.perf_counter() - start)


def test_target_is_sharded(run):
    assert run["rank"] == [0, 1] and run["world_size"] == [2, 2]
    assert run["sharded"] == [run.mode == "tensor_parallel"] * 2


@pytest.mark.parametrize("key", ["greedy", "cost_greedy"])
def test_greedy_equals_plain_generate(run, key):
    for greedy, pads, plain in zip(run[key], run["pads"], run["plain_greedy"], strict=True):
        assert [seq[pad:] for seq, pad in zip(greedy, pads, strict=True)] == plain
    assert run[key][0] == run[key][1]


@pytest.mark.parametrize("key", ["sampled_seed", "sampled_none", "custom_generate_none", "patched_same_torch_seed",
                                 "cost_sampled_seed"])
def test_sampled_tokens_identical_across_ranks(run, key):
    if run.mode == "replicated" and key.endswith("_none"):
        pytest.skip("a whole model per rank keeps its own seed (see test_replicated_ranks_stay_independent)")
    if run.mode == "replicated" and key.startswith("cost_"):
        pytest.skip("a whole model per rank follows its own times (no collective), so its own draft lengths")
    rank0, rank1 = run[key]
    assert rank0 == rank1


def test_replicated_ranks_stay_independent(run):
    """Data parallelism (a whole target per rank): seed=None draws each rank's own seed, with no collective."""
    if run.mode != "replicated":
        pytest.skip("only a whole model per rank")
    rank0, rank1 = run["sampled_none"]
    assert rank0 != rank1


def test_unseeded_runs_differ_between_calls(run):
    """seed=None still draws a fresh seed per call (rank 0's), not a fixed one."""
    first, second = run["sampled_none"][0]
    assert first != second


def test_torchrun_succeeded(run):
    assert run.failure is None, run.failure


def test_sharded_reads_transformers_sizes():
    class Model:
        pass

    model = Model()
    assert not _distributed.sharded(model) and not _distributed.sharded(None)
    model.tp_size = None
    assert not _distributed.sharded(model)
    model.tp_size = 2
    assert _distributed.sharded(model)


def test_run_seed_single_process():
    assert _distributed.run_seed(5) == 5
    torch.manual_seed(3)
    expected = int(torch.randint(0, 2**62, ()))
    torch.manual_seed(3)
    assert _distributed.run_seed(None) == expected  # unchanged outside a distributed run


@pytest.mark.parametrize(("backend", "expected"), [("gloo", "cpu"), ("cpu:gloo,cuda:nccl", "cpu"), ("nccl", "cuda:3"),
                                                   ("mpi", "cpu")])
def test_broadcast_device_follows_backend(monkeypatch, backend, expected):
    """NCCL takes only tensors on the current CUDA device, gloo only CPU tensors (no GPU needed to check the choice)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _distributed._broadcast_device() == torch.device(expected)
