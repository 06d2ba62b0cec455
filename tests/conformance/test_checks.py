"""The generic checks, on tiny fake modules: y = x * w (refimpl side) and its torch twin.

Fakes keep these tests independent of the real modules: each check must pass on a correct
pair and fail on a pair that is wrong in the way the check is about.
"""

import numpy as np
import pytest
import torch

from conformance import adapters, checks, tolerances
from conformance.records import Build, ErrorCase, Record
from conformance.runner import FAIL, PASS, Context
from refimpl.base import Module


class RefScale(Module):
    """y = x * w, w (N,): the refimpl side."""

    def __init__(self, n, *, dtype=np.float64, rng=None):
        super().__init__(dtype)
        rng = np.random.default_rng() if rng is None else rng
        self.register_parameter("w", rng.standard_normal(n).astype(dtype))
        self._x = None

    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)
        if x.shape[-1] != self.parameter("w").shape[0]:
            raise ValueError(f"RefScale: input expected last dim {self.parameter('w').shape[0]}, got {x.shape[-1]}")
        self._x = x
        return x * self.parameter("w")

    def backward(self, g):
        g = np.asarray(g, dtype=self.dtype)
        return g * self.parameter("w"), {"w": (g * self._x).reshape(-1, self._x.shape[-1]).sum(0)}


class TorchScale(torch.nn.Module):
    def __init__(self, n, bug=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(n))
        self.bug = bug

    def forward(self, x):
        if x.shape[-1] != self.w.shape[0]:
            raise ValueError(f"TorchScale: input expected last dim {self.w.shape[0]}, got {x.shape[-1]}")
        y = x * self.w
        if self.bug == "gradient":
            y = y + (x * self.w - (x * self.w).detach()) * 1e-6  # right value, wrong derivative
        if self.bug == "float32":
            y = y.to(torch.bfloat16).to(y.dtype) if y.dtype == torch.float32 else y
        return y


@pytest.fixture
def fakes(monkeypatch):
    state = {"bug": None}
    real = adapters.module_class

    def module_class(package, name):
        if name != "Scale":
            return real(package, name)
        if package == "refimpl":
            return RefScale
        return lambda n: TorchScale(n, state["bug"])

    monkeypatch.setattr(adapters, "module_class", module_class)
    return state


BUILD = Build("Scale", (4,), in_shape=(4,), reduction=1, label="N=4")


def _run(check, kind="forward", generator="dense", **kw):
    record = Record("Scale", "p", kind, generator, (BUILD,), check, "y = x * w", **kw)
    return check(record, Context(ledger={}))


@pytest.mark.parametrize("check,kind,generator", [
    (checks.check_forward, "forward", "dense"),
    (checks.check_forward_f32, "forward_f32", "dense_many"),
    (checks.check_autograd, "autograd", "dense"),
    (checks.check_backward_fd, "backward_fd", "dense_smooth"),
])
def test_checks_pass_on_a_correct_pair(fakes, check, kind, generator):
    outcome = _run(check, kind, generator)
    assert outcome.status == PASS, outcome.detail
    assert outcome.cases >= 3


def test_autograd_catches_a_wrong_derivative(fakes):
    fakes["bug"] = "gradient"
    assert _run(checks.check_forward).status == PASS  # the values are right
    outcome = _run(checks.check_autograd, "autograd")
    assert outcome.status == FAIL and "grad" in outcome.detail


def test_forward_f32_catches_low_precision(fakes):
    fakes["bug"] = "float32"
    outcome = _run(checks.check_forward_f32, "forward_f32", "dense_many")
    assert outcome.status == FAIL and outcome.unit == "ratio" and outcome.errors.max_err > 100


def test_backward_fd_catches_a_wrong_analytic_gradient(fakes, monkeypatch):
    monkeypatch.setattr(RefScale, "backward", lambda self, g: (2 * g * self.parameter("w"), {"w": np.zeros(4)}))
    outcome = _run(checks.check_backward_fd, "backward_fd", "dense_smooth")
    assert outcome.status == FAIL and "grad" in outcome.detail


def test_a_missing_parameter_gradient_fails(fakes, monkeypatch):
    monkeypatch.setattr(RefScale, "backward", lambda self, g: (g * self.parameter("w"), {}))
    outcome = _run(checks.check_autograd, "autograd")
    assert outcome.status == FAIL and "grad w: missing from refimpl's gradients" in outcome.detail


def test_conditioned_raises_only_where_the_spread_is_larger():
    tol = tolerances.forward64(4)
    assert checks.conditioned(tol, 0.0) is tol
    raised = checks.conditioned(tol, tol.value)
    assert raised.value == tolerances.CONDITIONING_FACTOR * tol.value and "conditioning spread" in raised.reason


def test_expect_error_reports_each_way_of_being_wrong():
    case = ErrorCase("last dim", BUILD, ValueError, r"input", ("4", "5"), (2, 5))

    def raises(exc):
        def call():
            raise exc
        return call

    assert checks.expect_error(raises(ValueError("input expected last dim 4, got 5")), case) == ""
    assert "raised nothing" in checks.expect_error(lambda: None, case)
    assert "expected ValueError" in checks.expect_error(raises(RuntimeError("input 4 5")), case)
    assert "does not match" in checks.expect_error(raises(ValueError("bad shape 4 5")), case)
    assert "does not state ['5']" in checks.expect_error(raises(ValueError("input expected 4, got 55")), case)


def test_check_error_runs_on_both_packages(fakes):
    good = ErrorCase("last dim", BUILD, ValueError, r"input", ("4", "5"), (2, 5))
    record = Record("Scale", "bad_input", "error", "hand", (), checks.check_error, "spec", data=(good,))
    outcome = checks.check_error(record, Context(ledger={}))
    assert outcome.status == PASS and outcome.cases == 2
    wrong = ErrorCase("last dim", BUILD, TypeError, r"input", (), (2, 5))
    record = Record("Scale", "bad_input", "error", "hand", (), checks.check_error, "spec", data=(wrong,))
    outcome = checks.check_error(record, Context(ledger={}))
    assert outcome.status == FAIL and "refimpl (last dim)" in outcome.detail and "accel (last dim)" in outcome.detail
