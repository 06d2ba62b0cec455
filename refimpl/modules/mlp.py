"""Perceptron and MLP: y = g(x W^T + b), stacked layer by layer (mirrors `torchrec.modules.mlp`)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from refimpl.base import Module, prefixed
from refimpl.modules.activation import ElementwiseActivation, SwishLayerNorm, identity, relu, sigmoid
from refimpl.modules.utils import extract_module_or_tensor_callable
from refimpl.nn import Linear, check_size, linear, linear_backward
from refimpl.validate import real_array

ACTIVATION_STRINGS = ("relu", "sigmoid", "swish_layernorm")

Activation = Union[
    str, ElementwiseActivation, Module, Callable[[], Module], Callable[[np.ndarray], np.ndarray]
]


def perceptron(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray], g: Callable) -> np.ndarray:
    """y = g(x W^T + b)
    Shapes: x (*, in); W (out, in); b (out,) or None -> (*, out).
    Source: page, torchrec.modules.mlp.Perceptron; semantics.md section 5.1."""
    return g(linear(x, W, b))


def perceptron_backward(
    grad_y: np.ndarray, x: np.ndarray, W: np.ndarray, has_bias: bool, z: np.ndarray, g_prime: Callable
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """dL/dz = dL/dy * g'(z),  then Linear's dL/dx = dL/dz W, dL/dW = sum_* dL/dz^T x, dL/db = sum_* dL/dz
    Shapes: grad_y, z (*, out); x (*, in); W (out, in) -> ((*, in), (out, in), (out,) or None).
    g' is the derivative of an elementwise activation."""
    return linear_backward(grad_y * g_prime(z), x, W, has_bias)


def resolve_activation(activation: Activation, out_size: int, dtype: Any) -> Any:
    """The activation of one layer with `out_size` outputs: an ElementwiseActivation, Module or callable.

    Strings name a fresh activation ("swish_layernorm" builds SwishLayerNorm(out_size) in `dtype`);
    a Module instance is used as is (so it is shared when several layers receive it); a
    zero-argument factory is called once here; any other callable is kept and has no backward.
    """
    if isinstance(activation, str):
        if activation == "relu":
            return relu
        if activation == "sigmoid":
            return sigmoid
        if activation == "swish_layernorm":
            return SwishLayerNorm(out_size, dtype=dtype)
        raise ValueError(
            f"activation: expected one of {list(ACTIVATION_STRINGS)} when a string, got {activation!r}"
        )
    if isinstance(activation, (ElementwiseActivation, Module, np.ufunc)):
        return activation
    if not callable(activation):
        raise TypeError(
            "activation: expected a string, an ElementwiseActivation, a refimpl Module or a callable, "
            f"got {activation!r} ({type(activation).__name__})"
        )
    return extract_module_or_tensor_callable(activation)


class Perceptron(Module):
    """y = activation(x W^T + b) (see `perceptron`).

    state_dict: `_linear.weight` (out, in), `_linear.bias` (out,), then `_activation_fn.*` when
    the activation is a refimpl Module. Inputs are cast to the module's dtype.
    """

    def __init__(
        self,
        in_size: int,
        out_size: int,
        bias: bool = True,
        activation: Activation = relu,
        device: Any = None,
        dtype: Any = np.float64,
        *,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(dtype)
        rng = np.random.default_rng() if rng is None else rng
        self.in_size = check_size("in_size", in_size)
        self.out_size = check_size("out_size", out_size)
        self._linear = Linear(self.in_size, self.out_size, bias, dtype=self.dtype, rng=rng)
        self.register_module("_linear", self._linear)
        self._activation_fn = resolve_activation(activation, self.out_size, self.dtype)
        if isinstance(self._activation_fn, Module):
            self.register_module("_activation_fn", self._activation_fn)
        self._x: Optional[np.ndarray] = None

    def _weights(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        b = self._linear.parameter("bias") if self._linear.has_bias else None
        return self._linear.parameter("weight"), b

    def forward(self, x: Any) -> np.ndarray:
        x = real_array(x, "Perceptron: input", self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_size:
            raise ValueError(f"Perceptron: input expected shape (*, {self.in_size}), got {tuple(x.shape)}")
        self._x = x
        W, b = self._weights()
        return perceptron(x, W, b, self._activation_fn)

    def backward(self, grad_output: Any) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        if self._x is None:
            raise RuntimeError("Perceptron.backward called before forward")
        act = self._activation_fn
        if not isinstance(act, (ElementwiseActivation, Module)):
            raise TypeError(
                f"Perceptron.backward: activation {act!r} has no known derivative; expected an "
                f"ElementwiseActivation, one of the strings {list(ACTIVATION_STRINGS)} or a refimpl "
                f"Module, got {type(act).__name__}"
            )
        x, (W, b) = self._x, self._weights()
        g = real_array(grad_output, "Perceptron: grad_output", self.dtype)
        expected = x.shape[:-1] + (self.out_size,)
        if g.shape != expected:
            raise ValueError(f"Perceptron: grad_output expected shape {expected}, got {g.shape}")
        z = linear(x, W, b)
        if isinstance(act, ElementwiseActivation):
            grad_x, grad_W, grad_b = perceptron_backward(g, x, W, b is not None, z, act.derivative)
            act_grads: Dict[str, np.ndarray] = {}
        else:
            # A module instance may be shared by several layers, so its cache is rebuilt from
            # this layer's pre-activation before its backward runs.
            act.forward(z)
            grad_z, act_grads = act.backward(g)
            grad_x, grad_W, grad_b = linear_backward(grad_z, x, W, b is not None)
        grads = {"_linear.weight": grad_W}
        if grad_b is not None:
            grads["_linear.bias"] = grad_b
        return grad_x, {**grads, **prefixed(act_grads, "_activation_fn.")}


def mlp(x: np.ndarray, layers: Sequence[Callable[[np.ndarray], np.ndarray]]) -> np.ndarray:
    """y = f_{L-1}(... f_1(f_0(x))),  f_i(x) = g_i(x W_i^T + b_i)
    Shapes: x (*, in_size) -> (*, layer_sizes[-1]); (*, in_size) unchanged when there are no layers.
    Source: page, torchrec.modules.mlp.MLP; semantics.md section 5.2."""
    for f_i in layers:
        x = f_i(x)
    return x


def mlp_backward(
    grad_y: np.ndarray, layers: Sequence[Module]
) -> Tuple[np.ndarray, List[Dict[str, np.ndarray]]]:
    """dL/dx = J_0^T (... J_{L-1}^T dL/dy), each J_i^T applied by layer i's backward, last layer first
    Shapes: grad_y (*, layer_sizes[-1]) -> ((*, in_size), one parameter-gradient dict per layer)."""
    grads: List[Dict[str, np.ndarray]] = [{} for _ in layers]
    for i in reversed(range(len(layers))):
        grad_y, grads[i] = layers[i].backward(grad_y)
    return grad_y, grads


class MLP(Module):
    """y = f_{L-1}(... f_0(x)), f_i a Perceptron from layer_sizes[i-1] (in_size for i = 0) to layer_sizes[i].

    state_dict: `_mlp.{i}._linear.weight`, `_mlp.{i}._linear.bias` and `_mlp.{i}._activation_fn.*`
    for module activations. "swish_layernorm" builds one SwishLayerNorm(layer_sizes[i]) per layer
    in the module's dtype; a Module instance is shared by all layers (listed under each layer);
    a factory is called once per layer. `activation_on_last=False` uses the identity on the last
    layer; `layer_sizes=[]` is the identity. Draws: one Linear per layer, weight then bias.
    """

    def __init__(
        self,
        in_size: int,
        layer_sizes: Sequence[int],
        bias: bool = True,
        activation: Activation = relu,
        device: Any = None,
        dtype: Any = np.float64,
        activation_on_last: bool = True,
        *,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(dtype)
        if isinstance(layer_sizes, (str, bytes)) or not isinstance(layer_sizes, Sequence):
            raise TypeError(f"MLP: layer_sizes expected a list of ints, got {layer_sizes!r}")
        # Checked here too so that layer_sizes=[] rejects what a layer would.
        if isinstance(activation, str) and activation not in ACTIVATION_STRINGS:
            raise ValueError(
                f"MLP: activation expected one of {list(ACTIVATION_STRINGS)} when a string, "
                f"got {activation!r}"
            )
        if not isinstance(activation, str) and not callable(activation):
            raise TypeError(f"MLP: activation expected a string or a callable, got {activation!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.in_size = check_size("in_size", in_size)
        self.layer_sizes = [check_size(f"layer_sizes[{i}]", n) for i, n in enumerate(layer_sizes)]
        self._layers: List[Perceptron] = []
        for i, out_size in enumerate(self.layer_sizes):
            last = i == len(self.layer_sizes) - 1
            layer_activation = identity if last and not activation_on_last else activation
            layer_in = in_size if i == 0 else self.layer_sizes[i - 1]
            layer = Perceptron(layer_in, out_size, bias, layer_activation, dtype=self.dtype, rng=rng)
            self.register_module(f"_mlp.{i}", layer)
            self._layers.append(layer)

    def forward(self, x: Any) -> np.ndarray:
        x = real_array(x, "MLP: input", self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_size:
            raise ValueError(f"MLP: input expected shape (*, {self.in_size}), got {tuple(x.shape)}")
        return mlp(x, self._layers)

    def backward(self, grad_output: Any) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        grad_x, per_layer = mlp_backward(real_array(grad_output, "MLP: grad_output", self.dtype), self._layers)
        grads: Dict[str, np.ndarray] = {}
        for i, layer_grads in enumerate(per_layer):
            grads.update(prefixed(layer_grads, f"_mlp.{i}."))
        return grad_x, _total_over_shared(self.state_dict(), grads)


def _total_over_shared(state: Dict[str, np.ndarray], grads: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Each key of a parameter listed under several keys (a shared activation module) gets the sum."""
    groups: Dict[int, List[str]] = {}
    for key, value in state.items():
        groups.setdefault(id(value), []).append(key)
    out = dict(grads)
    for keys in groups.values():
        if len(keys) > 1:
            total = sum(grads[k] for k in keys)
            for k in keys:
                out[k] = total.copy()
    return out
