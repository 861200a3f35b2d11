"""``specsampler bench``: the benchmarks of a source checkout's ``bench/`` folder, run in a subprocess (the package
never imports them); an installed package has none, and ``bench`` says where they live."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

from .errors import CLIError
from .info import backend_choice

REPO_BENCH = Path(__file__).resolve().parents[3] / "bench"  # a source checkout's benchmarks (an editable install)
BENCH_ELSEWHERE = ("the benchmarks are not part of the installed package: they live in the bench/ folder of the "
                   "source repository; clone it and run python bench/bench_cpu.py (CPU) or bench/device_check.sh "
                   "(GPU) there")


def bench_script(name: str, folder: Path = REPO_BENCH) -> Path:
    """The path of ``<folder>/<name>.py``.

    Parameters
    ----------
    name : str
        The script's name, without ``.py``.
    folder : Path
        The benchmarks' folder (default: this source checkout's ``bench/``).

    Returns
    -------
    Path

    Raises
    ------
    CLIError
        Naming ``bench``, with where the benchmarks live, when there is no such script (specsampler is installed
        rather than checked out).
    """
    path = folder / f"{name}.py"
    if not path.is_file():
        raise CLIError("bench", f"no {path}: {BENCH_ELSEWHERE}")
    return path


def run_script(path: Path, argv: list[str]) -> int:
    """Run ``python <path> <argv>`` in a subprocess (never imported here), its output copied to ours line by line.

    Parameters
    ----------
    path : Path
        The script.
    argv : list of str
        Its arguments.

    Returns
    -------
    int
        Its exit status.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # its lines as they come, not at exit
    with subprocess.Popen([sys.executable, str(path), *argv], stdout=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.returncode


def cmd_bench(args, folder: Path = REPO_BENCH) -> int:
    """``specsampler bench``: the CPU microbenchmark, or the GPU benchmark when CUDA is present.

    Parameters
    ----------
    args : argparse.Namespace
    folder : Path
        The benchmarks' folder (default: this source checkout's ``bench/``).

    Returns
    -------
    int
        The benchmark's exit status.
    """
    out = str(Path(args.out).resolve() if args.out else folder / "out")
    if torch.cuda.is_available() and not args.cpu:
        script = bench_script("bench_verify_gpu", folder)
        print(f"verify backend: {backend_choice(torch.device('cuda'))[1]}", flush=True)
        return run_script(script, (["--quick"] if args.quick else []) + ["--out", out])
    if args.vocab is not None and args.vocab < 2:
        raise CLIError("--vocab", f"must be >= 2, got {args.vocab}")
    if args.repeats is not None and args.repeats < 1:
        raise CLIError("--repeats", f"must be >= 1, got {args.repeats}")
    if importlib.util.find_spec("transformers") is None:
        raise CLIError("bench", "needs transformers (the CPU benchmark times it): pip install transformers")
    script = bench_script("devcheck_plot", folder)  # bench_cpu.py's table, then its plot
    print(f"verify backend: {backend_choice(torch.device('cpu'))[1]}\n", flush=True)
    argv = ["cpu", "--out", out] + (["--quick"] if args.quick else [])
    argv += [f"--{k}={v}" for k, v in (("vocab", args.vocab), ("repeats", args.repeats)) if v is not None]
    return run_script(script, argv)
