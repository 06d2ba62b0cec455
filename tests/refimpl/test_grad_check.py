"""refimpl.grad_check: central differences and the module gradient check."""

import numpy as np
import pytest

from refimpl.base import Module
from refimpl.grad_check import central_difference_grad, check_module_gradients


class Scale(Module):
    """y = w * x**2 elementwise; grad_x = 2 w x g, grad_w = sum_rows x**2 g (optionally wrong)."""

    def __init__(self, wrong_input=False, wrong_param=False, keys=None):
        super().__init__()
        self.register_parameter("w", np.array([2.0, -3.0]))
        self.wrong_input, self.wrong_param, self.keys = wrong_input, wrong_param, keys

    def forward(self, x):
        self.x = x
        return self.parameter("w") * x**2

    def backward(self, g):
        grad_x = 2 * self.parameter("w") * self.x * g * (1.5 if self.wrong_input else 1.0)
        grad_w = (self.x**2 * g).sum(axis=0) + (1.0 if self.wrong_param else 0.0)
        return grad_x, {k: grad_w for k in (self.keys or ["w"])}


class Bilinear(Module):
    """y = a * b (two positional arguments), no parameters."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return (g * self.b, g * self.a), {}


class SumList(Module):
    """y = sum_i c_i x_i over one list argument, no parameters."""

    def forward(self, xs):
        self.n = len(xs)
        return sum((i + 1) * x for i, x in enumerate(xs))

    def backward(self, g):
        return [(i + 1) * g for i in range(self.n)], {}


def test_central_difference_matches_cubic_derivative():
    x = np.array([[0.5, -1.0], [2.0, 0.0]])
    grad = central_difference_grad(lambda v: np.sum(v**3), x)
    np.testing.assert_allclose(grad, 3 * np.array([[0.25, 1.0], [4.0, 0.0]]), rtol=1e-8, atol=1e-8)


def test_central_difference_restores_x():
    x = np.array([1.0, 2.0, 3.0])
    central_difference_grad(lambda v: float(v @ v), x)
    np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])


def test_central_difference_rejects_lists():
    with pytest.raises(TypeError, match="x expected a numpy.ndarray, got list"):
        central_difference_grad(lambda v: 0.0, [1.0])


def test_correct_module_passes_and_returns_analytic_grads():
    x = np.array([[1.0, 2.0], [-0.5, 0.25]])
    g = np.array([[1.0, 0.5], [2.0, -1.0]])
    grad_x, grads = check_module_gradients(Scale(), x, grad_output=g)
    np.testing.assert_allclose(grad_x, 2 * np.array([2.0, -3.0]) * x * g)
    np.testing.assert_allclose(grads["w"], [1.0 * 1 + 0.25 * 2, 4.0 * 0.5 - 0.0625])


def test_wrong_input_gradient_names_input_and_index():
    x = np.array([[1.0, 2.0]])
    with pytest.raises(AssertionError, match=r"gradient of input mismatch at index \(0, \d\)"):
        check_module_gradients(Scale(wrong_input=True), x, grad_output=np.ones((1, 2)))


def test_wrong_parameter_gradient_names_parameter():
    with pytest.raises(AssertionError, match="gradient of parameter 'w' mismatch"):
        check_module_gradients(Scale(wrong_param=True), np.ones((1, 2)), rng=np.random.default_rng(0))


def test_missing_parameter_key_is_reported():
    with pytest.raises(AssertionError, match=r"grad_params keys: expected \['w'\], got \['v'\]"):
        check_module_gradients(Scale(keys=["v"]), np.ones((1, 2)), rng=np.random.default_rng(0))


def test_tuple_inputs_are_positional_arguments():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    (grad_a, grad_b), _ = check_module_gradients(Bilinear(), (a, b), grad_output=np.ones((2, 3)))
    np.testing.assert_allclose(grad_a, b)
    np.testing.assert_allclose(grad_b, a)


def test_list_input_is_one_list_argument():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(3), rng.standard_normal(3)]
    grads, _ = check_module_gradients(SumList(), xs, grad_output=np.full(3, 2.0))
    np.testing.assert_allclose(grads[1], np.full(3, 4.0))


def test_grad_output_shape_mismatch():
    with pytest.raises(ValueError, match=r"grad_output expected shape \(1, 2\), got \(2,\)"):
        check_module_gradients(Scale(), np.ones((1, 2)), grad_output=np.ones(2))


def test_non_finite_analytic_gradient_fails():
    class NanGrad(Scale):
        def backward(self, g):
            grad_x, grads = super().backward(g)
            grad_x[0, 1] = np.nan
            return grad_x, grads

    with pytest.raises(AssertionError, match=r"index \(0, 1\): analytic nan"):
        check_module_gradients(NanGrad(), np.ones((1, 2)), rng=np.random.default_rng(3))
