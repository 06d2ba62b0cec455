"""Central-difference gradient checks for refimpl modules (float64).

A module's analytic `backward` is trusted only after it matches
    dL/dtheta ~= (L(theta + eps) - L(theta - eps)) / (2 eps),   L = sum(forward(inputs) * grad_output)
for every input element and every parameter element.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


def central_difference_grad(
    f: Callable[[np.ndarray], Any], x: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """dL/dx_i ~= (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)
    Shapes: x any shape -> gradient of x's shape (float64); f returns a scalar.
    Source: second-order central difference (error O(eps^2)).

    `x` is perturbed in place and restored, so `f` may close over it.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"central_difference_grad: x expected a numpy.ndarray, got {type(x).__name__}")
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    if flat.size and not np.shares_memory(flat, x):
        raise ValueError("central_difference_grad: x expected a contiguous array, got a non-contiguous one")
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        f_plus = float(f(x))
        flat[i] = saved - eps
        f_minus = float(f(x))
        flat[i] = saved
        grad.reshape(-1)[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def _assert_close(name: str, analytic: Any, numeric: np.ndarray, rtol: float, atol: float) -> None:
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != numeric.shape:
        raise AssertionError(f"gradient of {name}: expected shape {numeric.shape}, got {analytic.shape}")
    if analytic.size == 0:
        return
    err = np.abs(analytic - numeric)
    # NaN compares False, so a non-finite analytic gradient counts as a mismatch.
    excess = np.where(np.isfinite(err), err - (atol + rtol * np.abs(numeric)), np.inf)
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    if excess[worst] > 0:
        raise AssertionError(
            f"gradient of {name} mismatch at index {tuple(int(i) for i in worst)}: "
            f"analytic {float(analytic[worst])!r}, numeric {float(numeric[worst])!r}, "
            f"abs error {float(err[worst])!r} (rtol={rtol}, atol={atol})"
        )


def check_module_gradients(
    module: Any,
    inputs: Any,
    grad_output: Optional[np.ndarray] = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    rng: Optional[np.random.Generator] = None,
) -> Tuple[Any, Dict[str, np.ndarray]]:
    """dL/dinput and dL/dparam from `module.backward` == central differences of L = sum(y * g)
    Shapes: inputs an array (forward(x)), a list of arrays (forward([x_0, ...]), one list argument)
    or a tuple of arrays (forward(x_0, x_1, ...)); grad_inputs mirrors it;
    grad_output g of the output's shape (drawn N(0, 1) from `rng` when None).
    Source: JAX-style numerical check of an analytic vector-Jacobian product.

    Returns the analytic `(grad_inputs, grad_params)`; raises AssertionError naming the input or
    parameter and the worst element when they disagree.
    """
    # A tuple is several positional arguments; a list is one list argument (DeepFM's embeddings).
    spread = isinstance(inputs, tuple)
    as_list = isinstance(inputs, (list, tuple))
    xs: List[np.ndarray] = [np.array(x, dtype=np.float64) for x in (inputs if as_list else [inputs])]
    rng = np.random.default_rng() if rng is None else rng

    def call() -> np.ndarray:
        if spread:
            return np.asarray(module.forward(*xs))
        return np.asarray(module.forward(xs) if as_list else module.forward(xs[0]))

    # The analytic pass must see the unperturbed forward's cache, so it runs before any probing.
    y = call()
    g = rng.standard_normal(y.shape) if grad_output is None else np.asarray(grad_output, np.float64)
    if g.shape != y.shape:
        raise ValueError(f"check_module_gradients: grad_output expected shape {y.shape}, got {g.shape}")
    grad_inputs, grad_params = module.backward(g)
    # Parameters are perturbed in place below, so forward must read them on every call.

    def loss(_: np.ndarray) -> float:
        return float(np.sum(call() * g))

    analytic_inputs: Sequence[Any] = grad_inputs if as_list else [grad_inputs]
    if len(analytic_inputs) != len(xs):
        raise AssertionError(
            f"grad_inputs: expected {len(xs)} gradients, got {len(analytic_inputs)}"
        )
    for i, x in enumerate(xs):
        numeric = central_difference_grad(loss, x)
        _assert_close(f"input {i}" if as_list else "input", analytic_inputs[i], numeric, rtol, atol)

    state = module.state_dict()
    if set(grad_params) != set(state):
        raise AssertionError(
            f"grad_params keys: expected {sorted(state)}, got {sorted(grad_params)}"
        )
    for key, param in state.items():
        # Shared parameters appear under several keys; each key's gradient is the total.
        numeric = central_difference_grad(loss, param)
        _assert_close(f"parameter '{key}'", grad_params[key], numeric, rtol, atol)
    return grad_inputs, grad_params
