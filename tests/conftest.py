"""Test setup: the Triton kernel runs compiled on CUDA, else on CPU tensors under Triton's interpreter."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter without its redundant re-patching: about 2x faster
    from specsampler._interpret import skip_repatching

    skip_repatching()
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: one torch thread each
    torch.set_num_threads(1)

import pytest  # noqa: E402

DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device present: the kernel tests run on each (compiled on CUDA, interpreted on the CPU)."""
    return torch.device(request.param)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot on a shared machine: one torch thread for a module
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scripted_cost_schedule():
    """The "cost" schedule with scripted times for one test: ``scripted_cost_schedule()`` enters
    :func:`util.scripted_costs` until the test ends (a test may call it conditionally)."""
    import contextlib

    from util import scripted_costs

    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(scripted_costs())


@pytest.fixture
def kernel_settings():
    """Set the kernels' switches for one test, restored after it: ``kernel_settings(fast_launch=False)``,
    ``kernel_settings(pdl=True)`` (``specsampler._testing.kernel_settings``); returns the launching module."""
    import contextlib

    from specsampler import _testing

    with contextlib.ExitStack() as stack:
        yield lambda **switches: stack.enter_context(_testing.kernel_settings(**switches))


@pytest.fixture
def fresh_kernel_state():
    """The kernels' process-wide caches emptied before and after the test (``specsampler._testing``)."""
    from specsampler import _testing

    _testing.reset_kernel_state()
    yield
    _testing.reset_kernel_state()
