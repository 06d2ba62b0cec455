"""CUDA kernel tests: a real GPU when torch sees one, Numba's simulator when NUMBA_ENABLE_CUDASIM=1.

Without either the whole folder is skipped; tests/accel/test_cuda_simulator.py reruns it under the
simulator. Every test asserts, through the `backend` fixture, that the backend it expected is the one
that ran, and the session ends with a "recspec cuda backend: ..." line naming the backends used.
"""

import numba
import pytest
import torch

from accel.kernels._device import cuda_backend

_USED = set()


def _expected_backend():
    if numba.config.ENABLE_CUDASIM:
        return "simulator"
    if torch.cuda.is_available():
        return "device"
    return None


@pytest.fixture(autouse=True)
def backend():
    """The backend these tests must run on; records the one that actually ran after each test."""
    expected = _expected_backend()
    if expected is None:
        pytest.skip("needs a CUDA device seen by torch, or NUMBA_ENABLE_CUDASIM=1 for Numba's simulator")
    yield expected
    _USED.add(cuda_backend())


def _kernel_backend(kernel) -> str:
    # The simulator's kernel objects are classes of its own package.
    return "simulator" if type(kernel).__module__.startswith("numba.cuda.simulator") else "device"


@pytest.fixture
def ran_on(backend):
    """ran_on(kernels): assert that cuda_backend() and every kernel in `kernels` belong to `backend`."""

    def check(kernels):
        assert cuda_backend() == backend
        assert {name: _kernel_backend(k) for name, k in vars(kernels).items()} == {
            name: backend for name in vars(kernels)
        }

    return check


def pytest_terminal_summary(terminalreporter):
    if _USED:
        terminalreporter.write_line(f"recspec cuda backend: {', '.join(sorted(_USED))}")
