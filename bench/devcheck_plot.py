"""The roofline plot: time against bytes that must be read, one panel per (dtype, mode), the copy bound as a line.

matplotlib draws it (``pip install matplotlib``, or the project's extra: ``pip install -e '.[plot]'``); without
matplotlib no plot is written, and :func:`write_plot` returns a one-line note that says how to get one.

Run as a script, it is the CPU benchmark with its plot (what ``specsampler bench --cpu`` runs in a source checkout):

    python bench/devcheck_plot.py cpu [--quick] [--vocab V] [--repeats N] [--out DIR]

bench_cpu.py's table of ``specsampler.verify`` (torch backend) against transformers, its warped table (temperature
0.7, top_k 50, top_p 0.9: verify and sample against transformers' warpers with specsampler.verify or
torch.multinomial), then the plot of the first table in ``DIR/bench_cpu.png``, with this CPU's copy bandwidth as the
roofline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

COLORS = {  # provider -> RGB
    "specsampler": (214, 39, 40),
    "torch": (31, 119, 180),
    "torch_compile": (44, 160, 44),
    "flashinfer": (148, 103, 189),
    "transformers": (255, 127, 14),
    "baseline": (140, 86, 75),  # an older kernel, with --baseline-kernel
}
NO_MATPLOTLIB = ("no plot: matplotlib is not installed (pip install matplotlib, or the extra: "
                 "pip install -e '.[plot]')")


def write_plot(path: str, rows: list[dict], copy_gbps: float, title: str) -> str:
    """Write the plot to `path` (PNG) with matplotlib.

    Parameters
    ----------
    path : str
        The PNG to write.
    rows : list of dict
        One point each: ``provider``, ``median_us``, ``bytes``, ``dtype``, ``mode``.
    copy_gbps : float
        The copy bandwidth (GB/s, bytes read plus written): the roofline.
    title : str

    Returns
    -------
    str
        One line to print: ``plot: <path>``, or :data:`NO_MATPLOTLIB` (and no file) when matplotlib does not import.
    """
    try:
        import matplotlib
    except ImportError:
        return NO_MATPLOTLIB
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dtype"], r["mode"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False, sharey=True)
    for ax, (dtype, mode) in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if (r["dtype"], r["mode"]) == (dtype, mode)]
        xs = sorted({r["bytes"] for r in sel})
        ax.plot(xs, [x / copy_gbps / 1e3 for x in xs], color="grey", lw=1, label="copy bound")
        for provider, color in COLORS.items():
            mine = [r for r in sel if r["provider"] == provider]
            if mine:
                xy = ([r["bytes"] for r in mine], [r["median_us"] for r in mine])
                ax.scatter(*xy, s=12, color=[c / 255 for c in color], label=provider)
        ax.set(xscale="log", yscale="log", title=f"{dtype}, {mode}", xlabel="bytes read (minimum)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("median time (us)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"


# ------------------------------------------------------------------------------------------------ the CPU benchmark
def cpu_copy_gbps() -> float:
    """This CPU's copy bandwidth (GB/s, bytes read plus written) over a 256 MiB buffer: the CPU plot's roofline."""
    import torch

    src = torch.ones(1 << 26)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def plot_cpu(rows: list[tuple], path: Path) -> str:
    """Plot bench_cpu.py's rows (time against the bytes a verification must read).

    Parameters
    ----------
    rows : list of tuple
        ``bench_cpu.run``'s rows: (B, K, V, sigma, mean accepted, transformers s, specsampler s).
    path : Path
        The PNG to write (its folder is created).

    Returns
    -------
    str
        The line of :func:`write_plot`.
    """
    points = []
    for batch, k, vocab, sigma, _, t_hf, t_ours in rows:
        nbytes = 4 * batch * ((k + 1) * vocab + k * vocab + 2 * vocab)
        for provider, seconds in (("transformers", t_hf), ("specsampler", t_ours)):
            points.append(dict(provider=provider, median_us=seconds * 1e6, bytes=nbytes, dtype="float32",
                               mode=f"sigma={sigma:g}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    copy_gbps = cpu_copy_gbps() if _has_matplotlib() else 1.0  # no plot: skip the 256 MiB copy
    return write_plot(str(path), points, copy_gbps, f"verify on CPU, K={rows[0][1]}, V={rows[0][2]}")


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_main(argv: list[str] | None = None) -> int:
    """``python bench/devcheck_plot.py cpu ...``: bench_cpu.py's two tables on one thread, then the plot.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``cpu`` (default: the command line's).

    Returns
    -------
    int
        The exit status.
    """
    p = argparse.ArgumentParser(prog="devcheck_plot.py cpu", description="bench_cpu.py's table and its plot")
    p.add_argument("--quick", action="store_true",
                   help="B in {1, 8}, sigma in {1, 0} (default: {1, 64} x {1, .5, 0}); the warped table at the same B")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    p.add_argument("--repeats", type=int, help="timed repeats per case (default 200; --quick 20)")
    p.add_argument("--out", default=str(HERE / "out"), help="folder for bench_cpu.png (default bench/out)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import torch
    from bench_cpu import run, run_warped

    batches, sigmas = ((1, 8), (1.0, 0.0)) if args.quick else ((1, 64), (1.0, 0.5, 0.0))
    repeats = args.repeats or (20 if args.quick else 200)
    torch.set_num_threads(1)
    rows = run([(b, 4, args.vocab, s) for b in batches for s in sigmas], repeats=repeats)
    run_warped(batches, 4, args.vocab, repeats)
    print(plot_cpu(rows, Path(args.out) / "bench_cpu.png"))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["cpu"]:
        sys.exit(f"usage: python {sys.argv[0]} cpu [--quick] [--vocab V] [--repeats N] [--out DIR]")
    sys.exit(cpu_main(sys.argv[2:]))
