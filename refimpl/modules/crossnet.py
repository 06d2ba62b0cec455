"""Cross networks (DCN, DCN-V2 low rank, mixture of experts): `torchrec.modules.crossnet` in NumPy.

Each layer is a module-level formula with a written backward in the same symbols; the modules
hold the parameters under TorchRec's state_dict keys, loop over the layers and keep each
layer's input for the backward pass. Batches are rows: `x_l` is (B, N) and `W_l . x_l` per
sample is `x_l @ W_l.T` for the whole batch.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from refimpl.base import Module
from refimpl.modules.activation import ElementwiseActivation, relu, sigmoid
from refimpl.modules.utils import xavier_normal
from refimpl.validate import real_array

Array = np.ndarray


# --- CrossNet --------------------------------------------------------------------------------
def cross_layer(x_0: Array, x_l: Array, W_l: Array, b_l: Array) -> Array:
    """x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l

    Shapes: x_0, x_l (B, N); W_l (N, N); b_l (N,) or (N, 1) as stored -> (B, N).
    Source: page, CrossNet; semantics.md 3.1.
    """
    return x_0 * (x_l @ W_l.T + b_l.reshape(-1)) + x_l


def cross_layer_backward(
    grad_x_next: Array, x_0: Array, x_l: Array, W_l: Array, b_l: Array
) -> Tuple[Array, Array, Array, Array]:
    """dL/d(x_0, x_l, W_l, b_l) of x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l, given dL/dx_{l+1}.

    Shapes: as cross_layer; returns (B, N), (B, N), (N, N), b_l's shape.
    With z = W_l . x_l + b_l: dx_0 = g * z, dz = g * x_0, dx_l = W_l^T dz + g, dW_l = dz x_l^T.
    """
    z = x_l @ W_l.T + b_l.reshape(-1)
    grad_z = grad_x_next * x_0
    grad_x_0 = grad_x_next * z
    grad_x_l = grad_z @ W_l + grad_x_next
    grad_W_l = grad_z.T @ x_l
    grad_b_l = grad_z.sum(axis=0).reshape(b_l.shape)
    return grad_x_0, grad_x_l, grad_W_l, grad_b_l


# --- LowRankCrossNet -------------------------------------------------------------------------
def low_rank_cross_layer(x_0: Array, x_l: Array, W_l: Array, V_l: Array, b_l: Array) -> Array:
    """x_{l+1} = x_0 * (W_l . (V_l . x_l) + b_l) + x_l

    Shapes: x_0, x_l (*, N); W_l (N, r); V_l (r, N); b_l (N,) -> (*, N).
    Source: page, LowRankCrossNet; semantics.md 3.2 (any leading shape, D4/D5).
    """
    return x_0 * ((x_l @ V_l.T) @ W_l.T + b_l) + x_l


def low_rank_cross_layer_backward(
    grad_x_next: Array, x_0: Array, x_l: Array, W_l: Array, V_l: Array, b_l: Array
) -> Tuple[Array, Array, Array, Array, Array]:
    """dL/d(x_0, x_l, W_l, V_l, b_l) of x_{l+1} = x_0 * (W_l . (V_l . x_l) + b_l) + x_l.

    Shapes: as low_rank_cross_layer; returns (*, N), (*, N), (N, r), (r, N), (N,).
    With h = V_l . x_l, z = W_l . h + b_l: dz = g * x_0, dW_l = dz h^T, dh = W_l^T dz,
    dV_l = dh x_l^T, dx_l = V_l^T dh + g, summed over every leading index.
    """
    N = x_l.shape[-1]
    h = x_l @ V_l.T
    z = h @ W_l.T + b_l
    grad_z = grad_x_next * x_0
    grad_h = grad_z @ W_l
    grad_x_0 = grad_x_next * z
    grad_x_l = grad_h @ V_l + grad_x_next
    # Parameters are shared by every leading index, so their gradients sum over all rows.
    grad_W_l = _rows(grad_z).T @ _rows(h)
    grad_V_l = _rows(grad_h).T @ _rows(x_l)
    grad_b_l = _rows(grad_z).sum(axis=0).reshape(N)
    return grad_x_0, grad_x_l, grad_W_l, grad_V_l, grad_b_l


def _rows(a: Array) -> Array:
    return a.reshape(-1, a.shape[-1])


# --- VectorCrossNet --------------------------------------------------------------------------
def vector_cross_layer(x_0: Array, x_l: Array, w_l: Array, b_l: Array) -> Array:
    """x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l   (TorchRec 1.8: bias outside the product)

    Shapes: x_0, x_l (B, N); w_l (N, 1); b_l (N, 1) or (N,) -> (B, N).
    Source: semantics.md 3.3 and discrepancy D3 (the page's formula is
    vector_cross_layer_documented).
    """
    return x_0 * (x_l @ w_l) + b_l.reshape(-1) + x_l


def vector_cross_layer_backward(
    grad_x_next: Array, x_0: Array, x_l: Array, w_l: Array, b_l: Array
) -> Tuple[Array, Array, Array, Array]:
    """dL/d(x_0, x_l, w_l, b_l) of x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l.

    Shapes: as vector_cross_layer; returns (B, N), (B, N), (N, 1), b_l's shape.
    With the per-sample scalar s = x_l . w_l: ds = <g, x_0>, dx_l = ds w_l + g, dw_l = x_l^T ds.
    """
    s = x_l @ w_l
    grad_s = (grad_x_next * x_0).sum(axis=1, keepdims=True)
    grad_x_0 = grad_x_next * s
    grad_x_l = grad_s @ w_l.T + grad_x_next
    grad_w_l = x_l.T @ grad_s
    grad_b_l = grad_x_next.sum(axis=0).reshape(b_l.shape)
    return grad_x_0, grad_x_l, grad_w_l, grad_b_l


def vector_cross_layer_documented(x_0: Array, x_l: Array, w_l: Array, b_l: Array) -> Array:
    """x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l   (the page's VectorCrossNet formula)

    Shapes: x_0, x_l (B, N); w_l (N, 1); b_l (N, 1) or (N,) -> (B, N).
    Source: page, VectorCrossNet; differs from TorchRec whenever b_l != 0 (discrepancy D3).
    """
    return x_0 * (x_l @ w_l + b_l.reshape(-1)) + x_l


def vector_cross_layer_documented_backward(
    grad_x_next: Array, x_0: Array, x_l: Array, w_l: Array, b_l: Array
) -> Tuple[Array, Array, Array, Array]:
    """dL/d(x_0, x_l, w_l, b_l) of x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l, W_l a vector.

    Shapes: as vector_cross_layer_documented; returns (B, N), (B, N), (N, 1), b_l's shape.
    With s = x_l . w_l, z = s + b_l: dx_0 = g * z, dz = g * x_0, ds = sum_n dz_n.
    """
    z = x_l @ w_l + b_l.reshape(-1)
    grad_z = grad_x_next * x_0
    grad_s = grad_z.sum(axis=1, keepdims=True)
    grad_x_0 = grad_x_next * z
    grad_x_l = grad_s @ w_l.T + grad_x_next
    grad_w_l = x_l.T @ grad_s
    grad_b_l = grad_z.sum(axis=0).reshape(b_l.shape)
    return grad_x_0, grad_x_l, grad_w_l, grad_b_l


# --- LowRankMixtureCrossNet ------------------------------------------------------------------
def low_rank_mixture_expert(
    x_0: Array, x_l: Array, U: Array, C: Array, V: Array, b_l: Array, g: Callable[[Array], Array]
) -> Array:
    """expert_i = x_0 * (U_{li} . g(C_{li} . g(V_{li} . x_l)) + b_l), for every expert i at once

    Shapes: x_0, x_l (B, N); U (K, N, r); C (K, r, r); V (K, r, N); b_l (N, 1) or (N,)
    -> (B, K, N), expert i in [:, i, :].
    Source: page, LowRankMixtureCrossNet; semantics.md 3.4.
    """
    V_x = np.einsum("krn,bn->bkr", V, x_l)
    C_g = np.einsum("kst,bkt->bks", C, g(V_x))
    U_g = np.einsum("knr,bkr->bkn", U, g(C_g))
    return x_0[:, None, :] * (U_g + b_l.reshape(-1))


def low_rank_mixture_expert_backward(
    grad_expert: Array,
    x_0: Array,
    x_l: Array,
    U: Array,
    C: Array,
    V: Array,
    b_l: Array,
    g: ElementwiseActivation,
) -> Tuple[Array, Array, Array, Array, Array, Array]:
    """dL/d(x_0, x_l, U, C, V, b_l) of expert_i = x_0 * (U_li . g(C_li . g(V_li . x_l)) + b_l).

    Shapes: grad_expert (B, K, N), the rest as low_rank_mixture_expert; returns (B, N), (B, N),
    (K, N, r), (K, r, r), (K, r, N), b_l's shape. Chain rule through a = V x_l, c = C g(a),
    u = U g(c) with g' = g.derivative; x_0 and b_l are shared by all experts, so their
    gradients sum over i.
    """
    a = np.einsum("krn,bn->bkr", V, x_l)
    h = g(a)
    c = np.einsum("kst,bkt->bks", C, h)
    q = g(c)
    u = np.einsum("knr,bkr->bkn", U, q)
    grad_u = grad_expert * x_0[:, None, :]
    grad_x_0 = np.einsum("bkn,bkn->bn", grad_expert, u + b_l.reshape(-1))
    grad_b_l = grad_u.sum(axis=(0, 1)).reshape(b_l.shape)
    grad_U = np.einsum("bkn,bkr->knr", grad_u, q)
    grad_c = np.einsum("knr,bkn->bkr", U, grad_u) * g.derivative(c)
    grad_C = np.einsum("bks,bkt->kst", grad_c, h)
    grad_a = np.einsum("kst,bks->bkt", C, grad_c) * g.derivative(a)
    grad_V = np.einsum("bkr,bn->krn", grad_a, x_l)
    grad_x_l = np.einsum("krn,bkr->bn", V, grad_a)
    return grad_x_0, grad_x_l, grad_U, grad_C, grad_V, grad_b_l


def mixture_gates(x_l: Array, w: Array) -> Array:
    """p_i = softmax_i(w_i^T x_l)   (gate logits without bias, on the current layer input)

    Shapes: x_l (B, N); w (K, N), row i = gates.{i}.weight -> (B, K), rows sum to one.
    Source: semantics.md 3.4.
    """
    z = x_l @ w.T
    # Shifting by the row maximum keeps exp finite; softmax is invariant to the shift.
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def low_rank_mixture_cross_layer(
    x_0: Array,
    x_l: Array,
    U: Array,
    C: Array,
    V: Array,
    b_l: Array,
    w: Optional[Array],
    g: Callable[[Array], Array],
) -> Array:
    """x_{l+1} = sum_i p_i expert_i + x_l, p = softmax_i(w_i^T x_l); K = 1: x_{l+1} = expert_0 + x_l

    Shapes: x_0, x_l (B, N); U, C, V, b_l as low_rank_mixture_expert; w (K, N) or None when
    K = 1 -> (B, N).
    Source: page, LowRankMixtureCrossNet (MoE); semantics.md 3.4 (no gate when K = 1).
    """
    expert = low_rank_mixture_expert(x_0, x_l, U, C, V, b_l, g)
    if expert.shape[1] == 1:
        return expert[:, 0, :] + x_l
    p = mixture_gates(x_l, _gate_weights(w, expert.shape[1]))
    return np.einsum("bk,bkn->bn", p, expert) + x_l


def low_rank_mixture_cross_layer_backward(
    grad_x_next: Array,
    x_0: Array,
    x_l: Array,
    U: Array,
    C: Array,
    V: Array,
    b_l: Array,
    w: Optional[Array],
    g: ElementwiseActivation,
) -> Tuple[Array, Array, Array, Array, Array, Array, Optional[Array]]:
    """dL/d(x_0, x_l, U, C, V, b_l, w) of x_{l+1} = sum_i p_i expert_i + x_l.

    Shapes: as low_rank_mixture_cross_layer; returns (B, N), (B, N), U's, C's, V's, b_l's
    shapes and (K, N) for w (None when K = 1). Softmax backward: dz_i = p_i (dp_i - sum_j p_j dp_j)
    with dp_i = <g, expert_i>; z_i = w_i^T x_l adds w^T dz to dx_l.
    """
    K = U.shape[0]
    if K == 1:
        grads = low_rank_mixture_expert_backward(grad_x_next[:, None, :], x_0, x_l, U, C, V, b_l, g)
        grad_x_0, grad_x_l, grad_U, grad_C, grad_V, grad_b_l = grads
        return grad_x_0, grad_x_l + grad_x_next, grad_U, grad_C, grad_V, grad_b_l, None
    w = _gate_weights(w, K)
    expert = low_rank_mixture_expert(x_0, x_l, U, C, V, b_l, g)
    p = mixture_gates(x_l, w)
    grad_p = np.einsum("bn,bkn->bk", grad_x_next, expert)
    grad_z = p * (grad_p - (p * grad_p).sum(axis=1, keepdims=True))
    grad_expert = p[:, :, None] * grad_x_next[:, None, :]
    grads = low_rank_mixture_expert_backward(grad_expert, x_0, x_l, U, C, V, b_l, g)
    grad_x_0, grad_x_l, grad_U, grad_C, grad_V, grad_b_l = grads
    grad_x_l = grad_x_l + grad_z @ w + grad_x_next
    grad_w = grad_z.T @ x_l
    return grad_x_0, grad_x_l, grad_U, grad_C, grad_V, grad_b_l, grad_w


def _gate_weights(w: Optional[Array], K: int) -> Array:
    if w is None or w.shape[0] != K:
        got = None if w is None else tuple(w.shape)
        raise ValueError(f"low_rank_mixture_cross_layer: w (gate weights) expected shape ({K}, N) "
                         f"for {K} experts, got {got}")
    return w


# --- modules ---------------------------------------------------------------------------------
def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{name}: expected an int >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


class _CrossNetBase(Module):
    """Shared frame: validates the input, loops over the layers, runs the backward chain."""

    # Only LowRankCrossNet accepts (*, N); the others take [B, N] as TorchRec does (D4).
    _any_leading_shape = False

    def __init__(self, in_features: int, num_layers: int, dtype: Any) -> None:
        super().__init__(dtype)
        self.in_features = _check_count("in_features", in_features, 1)
        self.num_layers = _check_count("num_layers", num_layers, 0)
        self._x_0: Optional[Array] = None
        self._layer_inputs: List[Array] = []

    def _layer(self, l: int, x_0: Array, x_l: Array) -> Array:
        raise NotImplementedError

    def _layer_backward(
        self, l: int, grad_x_next: Array, x_0: Array, x_l: Array
    ) -> Tuple[Array, Array, Dict[str, Array]]:
        raise NotImplementedError

    def _as_input(self, input: Any) -> Array:
        x = real_array(input, f"{type(self).__name__}: input")
        N = self.in_features
        expected = "(*, %d)" % N if self._any_leading_shape else "[B, %d] (2-D)" % N
        bad_rank = x.ndim < 1 if self._any_leading_shape else x.ndim != 2
        if bad_rank or x.shape[-1] != N:
            raise ValueError(
                f"{type(self).__name__}: input expected shape {expected}, got {tuple(x.shape)}"
            )
        return x.astype(self.dtype, copy=False)

    def forward(self, input: Any) -> Array:
        x_0 = self._as_input(input)
        x_l = x_0
        self._layer_inputs = []
        for l in range(self.num_layers):
            self._layer_inputs.append(x_l)
            x_l = self._layer(l, x_0, x_l)
        self._x_0 = x_0
        return x_l

    def backward(self, grad_output: Any) -> Tuple[Array, Dict[str, Array]]:
        """(dL/dinput, {state_dict key: dL/dparam}) for the last forward call."""
        if self._x_0 is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward first")
        x_0 = self._x_0
        grad_x_l = real_array(grad_output, f"{type(self).__name__}.backward: grad_output", self.dtype)
        if grad_x_l.shape != x_0.shape:
            raise ValueError(
                f"{type(self).__name__}.backward: grad_output expected shape {tuple(x_0.shape)}, "
                f"got {tuple(grad_x_l.shape)}"
            )
        grad_x_0 = np.zeros_like(x_0)
        grads: Dict[str, Array] = {}
        for l in reversed(range(self.num_layers)):
            x_l = self._layer_inputs[l]
            dx_0, grad_x_l, layer_grads = self._layer_backward(l, grad_x_l, x_0, x_l)
            grad_x_0 += dx_0
            for key, grad in layer_grads.items():
                # A parameter used by several layers (the mixture's gates) sums their terms.
                grads[key] = grads[key] + grad if key in grads else grad
        # x_0 is also the first layer's x_l, so the chain's gradient lands on the input too.
        grad_input = grad_x_0 + grad_x_l
        # A parameter no layer reads (the gates when num_layers = 0) has a zero gradient.
        state = self.state_dict()
        grad_params = {k: grads[k] if k in grads else np.zeros_like(v) for k, v in state.items()}
        return grad_input, grad_params


class CrossNet(_CrossNetBase):
    """x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l with full-rank W_l (N, N), l = 0..num_layers-1.

    State: `kernels.{l}` (N, N) xavier normal for every l, then `bias.{l}` (N, 1) zeros.
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        *,
        dtype: Any = np.float64,
        device: Any = None,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(in_features, num_layers, dtype)
        rng = np.random.default_rng() if rng is None else rng
        N = self.in_features
        for l in range(self.num_layers):
            self.register_parameter(f"kernels.{l}", xavier_normal((N, N), rng, self.dtype))
        for l in range(self.num_layers):
            self.register_parameter(f"bias.{l}", np.zeros((N, 1), self.dtype))

    def _layer(self, l: int, x_0: Array, x_l: Array) -> Array:
        return cross_layer(x_0, x_l, self.parameter(f"kernels.{l}"), self.parameter(f"bias.{l}"))

    def _layer_backward(self, l, grad_x_next, x_0, x_l):
        W_l, b_l = self.parameter(f"kernels.{l}"), self.parameter(f"bias.{l}")
        grad_x_0, grad_x_l, grad_W_l, grad_b_l = cross_layer_backward(
            grad_x_next, x_0, x_l, W_l, b_l
        )
        return grad_x_0, grad_x_l, {f"kernels.{l}": grad_W_l, f"bias.{l}": grad_b_l}


class LowRankCrossNet(_CrossNetBase):
    """x_{l+1} = x_0 * (W_l . (V_l . x_l) + b_l) + x_l with W_l (N, r), V_l (r, N); input (*, N).

    State: `W_kernels.{l}` (N, r), then `V_kernels.{l}` (r, N), both xavier normal, then
    `bias.{l}` (N,) zeros.
    """

    _any_leading_shape = True

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        low_rank: int = 1,
        *,
        dtype: Any = np.float64,
        device: Any = None,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(in_features, num_layers, dtype)
        self.low_rank = _check_count("low_rank", low_rank, 1)
        rng = np.random.default_rng() if rng is None else rng
        N, r = self.in_features, self.low_rank
        for l in range(self.num_layers):
            self.register_parameter(f"W_kernels.{l}", xavier_normal((N, r), rng, self.dtype))
        for l in range(self.num_layers):
            self.register_parameter(f"V_kernels.{l}", xavier_normal((r, N), rng, self.dtype))
        for l in range(self.num_layers):
            self.register_parameter(f"bias.{l}", np.zeros((N,), self.dtype))

    def _params(self, l: int) -> Tuple[Array, Array, Array]:
        return (self.parameter(f"W_kernels.{l}"), self.parameter(f"V_kernels.{l}"),
                self.parameter(f"bias.{l}"))

    def _layer(self, l: int, x_0: Array, x_l: Array) -> Array:
        return low_rank_cross_layer(x_0, x_l, *self._params(l))

    def _layer_backward(self, l, grad_x_next, x_0, x_l):
        grad_x_0, grad_x_l, grad_W_l, grad_V_l, grad_b_l = low_rank_cross_layer_backward(
            grad_x_next, x_0, x_l, *self._params(l)
        )
        grads = {f"W_kernels.{l}": grad_W_l, f"V_kernels.{l}": grad_V_l, f"bias.{l}": grad_b_l}
        return grad_x_0, grad_x_l, grads


class VectorCrossNet(_CrossNetBase):
    """x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l (TorchRec's formula; the page's is
    vector_cross_layer_documented, see D3).

    State: `kernels.{l}` (N, 1) xavier normal (fan_in 1, fan_out N), then `bias.{l}` (N, 1) zeros.
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        *,
        dtype: Any = np.float64,
        device: Any = None,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(in_features, num_layers, dtype)
        rng = np.random.default_rng() if rng is None else rng
        N = self.in_features
        for l in range(self.num_layers):
            self.register_parameter(f"kernels.{l}", xavier_normal((N, 1), rng, self.dtype))
        for l in range(self.num_layers):
            self.register_parameter(f"bias.{l}", np.zeros((N, 1), self.dtype))

    def _layer(self, l: int, x_0: Array, x_l: Array) -> Array:
        w_l, b_l = self.parameter(f"kernels.{l}"), self.parameter(f"bias.{l}")
        return vector_cross_layer(x_0, x_l, w_l, b_l)

    def _layer_backward(self, l, grad_x_next, x_0, x_l):
        w_l, b_l = self.parameter(f"kernels.{l}"), self.parameter(f"bias.{l}")
        grad_x_0, grad_x_l, grad_w_l, grad_b_l = vector_cross_layer_backward(
            grad_x_next, x_0, x_l, w_l, b_l
        )
        return grad_x_0, grad_x_l, {f"kernels.{l}": grad_w_l, f"bias.{l}": grad_b_l}


_NAMED_ACTIVATIONS = {"relu": relu, "sigmoid": sigmoid}

Activation = Union[str, ElementwiseActivation, Module, Callable[[Array], Array]]


def _resolve_activation(activation: Activation) -> Callable[[Array], Array]:
    if isinstance(activation, str):
        if activation not in _NAMED_ACTIVATIONS:
            raise ValueError(
                f"LowRankMixtureCrossNet: activation expected one of {sorted(_NAMED_ACTIVATIONS)} "
                f"or a callable, got {activation!r}"
            )
        return _NAMED_ACTIVATIONS[activation]
    if not callable(activation):
        raise TypeError(
            f"LowRankMixtureCrossNet: activation expected a string or a callable, "
            f"got {type(activation).__name__}"
        )
    return activation


class LowRankMixtureCrossNet(_CrossNetBase):
    """x_{l+1} = sum_i p_i expert_i + x_l, expert_i = x_0 * (U_li . g(C_li . g(V_li . x_l)) + b_l).

    State, in creation order: `U_kernels.{l}` (K, N, r), `V_kernels.{l}` (K, r, N) xavier normal,
    `bias.{l}` (N, 1) zeros, `gates.{i}.weight` (1, N) ~ U(-1/sqrt(N), 1/sqrt(N)) when K > 1,
    then `C_kernels.{l}` (K, r, r) xavier normal. `activation` is an ElementwiseActivation,
    "relu", "sigmoid", or any callable (forward only: backward needs g').
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        num_experts: int = 1,
        low_rank: int = 1,
        activation: Activation = relu,
        *,
        dtype: Any = np.float64,
        device: Any = None,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(in_features, num_layers, dtype)
        self.num_experts = _check_count("num_experts", num_experts, 1)
        self.low_rank = _check_count("low_rank", low_rank, 1)
        self.activation = _resolve_activation(activation)
        rng = np.random.default_rng() if rng is None else rng
        N, K, r, L = self.in_features, self.num_experts, self.low_rank, self.num_layers
        for l in range(L):
            self.register_parameter(f"U_kernels.{l}", xavier_normal((K, N, r), rng, self.dtype))
        for l in range(L):
            self.register_parameter(f"V_kernels.{l}", xavier_normal((K, r, N), rng, self.dtype))
        for l in range(L):
            self.register_parameter(f"bias.{l}", np.zeros((N, 1), self.dtype))
        if K > 1:
            bound = 1 / np.sqrt(N)  # nn.Linear(N, 1, bias=False): kaiming_uniform(a=sqrt(5))
            for i in range(K):
                gate = rng.uniform(-bound, bound, size=(1, N)).astype(self.dtype)
                self.register_parameter(f"gates.{i}.weight", gate)
        for l in range(L):
            self.register_parameter(f"C_kernels.{l}", xavier_normal((K, r, r), rng, self.dtype))
        # A module activation is a TorchRec submodule `_activation`; its state joins ours.
        if isinstance(self.activation, Module):
            self.register_module("_activation", self.activation)

    def _params(self, l: int) -> Tuple[Array, Array, Array, Array, Optional[Array]]:
        w = None
        if self.num_experts > 1:
            w = np.concatenate(
                [self.parameter(f"gates.{i}.weight") for i in range(self.num_experts)]
            )
        return (self.parameter(f"U_kernels.{l}"), self.parameter(f"C_kernels.{l}"),
                self.parameter(f"V_kernels.{l}"), self.parameter(f"bias.{l}"), w)

    def _layer(self, l: int, x_0: Array, x_l: Array) -> Array:
        return low_rank_mixture_cross_layer(x_0, x_l, *self._params(l), self.activation)

    def backward(self, grad_output: Any) -> Tuple[Array, Dict[str, Array]]:
        g = self.activation
        # The chain rule needs g'; a module activation with parameters would need their gradients.
        if isinstance(g, Module) and g.state_dict():
            problem = "has parameters"
        elif not callable(getattr(g, "derivative", None)):
            problem = "has no derivative"
        else:
            return super().backward(grad_output)
        name = getattr(g, "name", None) or getattr(g, "__name__", None) or type(g).__name__
        raise TypeError(
            f"LowRankMixtureCrossNet.backward: activation {name!r} {problem}; expected an "
            f"ElementwiseActivation with its derivative (relu, sigmoid, 'relu', 'sigmoid')"
        )

    def _layer_backward(self, l, grad_x_next, x_0, x_l):
        grad_x_0, grad_x_l, grad_U, grad_C, grad_V, grad_b_l, grad_w = (
            low_rank_mixture_cross_layer_backward(
                grad_x_next, x_0, x_l, *self._params(l), self.activation
            )
        )
        grads = {f"U_kernels.{l}": grad_U, f"V_kernels.{l}": grad_V, f"C_kernels.{l}": grad_C,
                 f"bias.{l}": grad_b_l}
        if grad_w is not None:
            grads.update({f"gates.{i}.weight": grad_w[i : i + 1] for i in range(self.num_experts)})
        return grad_x_0, grad_x_l, grads
