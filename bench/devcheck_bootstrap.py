"""Make ``specsampler`` and ``specsampler.triton_kernels`` importable from the working tree, installed or not.

The installed package maps ``triton_kernels/`` to ``specsampler.triton_kernels`` (pyproject's package-dir).
``bench/device_check.sh`` builds a symlink tree for that and puts it on PYTHONPATH; this module does the same job in
process, for running ``python3 bench/bench_verify_gpu.py`` by hand, without touching ``src/``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_importable(root: Path = ROOT) -> str:
    """Import ``specsampler.triton_kernels``, from `root`'s ``src`` and ``triton_kernels`` if it is not installed.

    Parameters
    ----------
    root : Path
        The repository root.

    Returns
    -------
    str
        Where ``specsampler`` was imported from.
    """
    try:
        importlib.import_module("specsampler.triton_kernels")
    except ImportError:
        _load_from_source(root)
    return str(Path(sys.modules["specsampler"].__file__).parent)


def _load_from_source(root: Path) -> None:
    """Put ``root/src`` first on sys.path and register ``root/triton_kernels`` as ``specsampler.triton_kernels``.

    The kernel package goes first: it imports nothing of specsampler (nor triton, until a launcher is asked for),
    while specsampler's torch backend takes its constants from it."""
    for name in [m for m in sys.modules if m == "specsampler" or m.startswith("specsampler.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root / "src"))
    spec = importlib.util.find_spec("specsampler")
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    folder = root / "triton_kernels"
    kernels_spec = importlib.util.spec_from_file_location("specsampler.triton_kernels", folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
    kernels = importlib.util.module_from_spec(kernels_spec)
    sys.modules[kernels_spec.name] = kernels
    kernels_spec.loader.exec_module(kernels)
    package.triton_kernels = kernels
    try:
        spec.loader.exec_module(package)
    except BaseException:
        for name in [m for m in sys.modules if m == "specsampler" or m.startswith("specsampler.")]:
            del sys.modules[name]
        raise
