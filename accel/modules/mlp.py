"""Perceptron and MLP: drop-ins for `torchrec.modules.mlp` (BLAS GEMMs through nn.Linear)."""

from __future__ import annotations

from typing import Callable, List, Union

import torch
from torch import nn

from accel.modules._init import DeviceLike, check_count, check_dense_input
from accel.modules.activation import SwishLayerNorm
from accel.modules.utils import extract_module_or_tensor_callable

TensorFn = Callable[[torch.Tensor], torch.Tensor]
ActivationSpec = Union[str, Callable[[], nn.Module], nn.Module, TensorFn]

_STRING_ACTIVATIONS = ("relu", "sigmoid", "swish_layernorm")


class Perceptron(nn.Module):
    """y = activation(x W^T + b).

    Shapes: input (*, in_size) -> (*, out_size); _linear.weight (out_size, in_size),
    _linear.bias (out_size,). Init: nn.Linear's (weight then bias, U(+-1/sqrt(in_size))) in
    `dtype` on `device`, as TorchRec. An nn.Module activation is registered as `_activation_fn`.
    """

    def __init__(
        self,
        in_size: int,
        out_size: int,
        bias: bool = True,
        activation: Union[nn.Module, TensorFn] = torch.relu,
        device: DeviceLike = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        # Zero sizes are valid, as for nn.Linear and TorchRec: the output is then (*, 0) or act(bias).
        self._in_size = check_count("in_size", in_size, 0)
        self._out_size = check_count("out_size", out_size, 0)
        if not callable(activation):
            raise TypeError(
                f"activation must be an nn.Module or a callable Tensor -> Tensor, got {type(activation).__name__}"
            )
        self._linear = nn.Linear(in_size, out_size, bias=bias, device=device, dtype=dtype)
        self._activation_fn = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_dense_input(input, [self._linear.weight], self._in_size)
        return self._activation_fn(self._linear(input))


class MLP(nn.Module):
    """y = P_{n-1}( ... P_1(P_0(x))), P_i = Perceptron(layer_sizes[i-1] or in_size, layer_sizes[i]).

    Shapes: input (*, in_size) -> (*, layer_sizes[-1]) (identity when layer_sizes is empty);
    keys `_mlp.{i}._linear.weight/bias` (+ `_mlp.{i}._activation_fn.*` for module activations).
    Init: one nn.Linear per layer in order, each layer's activation built before its Linear
    (TorchRec's RNG order).

    activation: "relu" or "sigmoid" (torch.relu / torch.sigmoid); "swish_layernorm" (a fresh
    SwishLayerNorm(layer_sizes[i]) per layer; as in TorchRec, `dtype` is then ignored and the
    layers are float32); any other string raises ValueError (TorchRec accepts it and fails at
    forward). A zero-argument factory is called once per layer (separate parameters); a
    function Tensor -> Tensor or an nn.Module instance is used as is, so one module instance is
    shared by every layer. activation_on_last=False puts nn.Identity() on the last layer.
    """

    def __init__(
        self,
        in_size: int,
        layer_sizes: List[int],
        bias: bool = True,
        activation: ActivationSpec = torch.relu,
        device: DeviceLike = None,
        dtype: torch.dtype = torch.float32,
        activation_on_last: bool = True,
    ) -> None:
        super().__init__()
        check_count("in_size", in_size, 0)
        for i, size in enumerate(layer_sizes):
            check_count(f"layer_sizes[{i}]", size, 0)
        swish = False
        if isinstance(activation, str):
            if activation not in _STRING_ACTIVATIONS:
                raise ValueError(
                    f"activation must be one of {', '.join(repr(a) for a in _STRING_ACTIVATIONS)} "
                    f"when given as a string, got {activation!r}"
                )
            swish = activation == "swish_layernorm"
            activation = {"relu": torch.relu, "sigmoid": torch.sigmoid}.get(activation, activation)
        # TorchRec builds the swish_layernorm layers without passing `dtype` on.
        layer_dtype = torch.float32 if swish else dtype
        n = len(layer_sizes)
        layers = []
        for i in range(n):
            in_i = layer_sizes[i - 1] if i > 0 else in_size
            # The activation is built first: TorchRec evaluates it as an argument of Perceptron(...).
            if i == n - 1 and not activation_on_last:
                act = nn.Identity()
            elif swish:
                act = SwishLayerNorm(layer_sizes[i], device=device)
            else:
                act = extract_module_or_tensor_callable(activation)
            layers.append(Perceptron(in_i, layer_sizes[i], bias=bias, activation=act, device=device, dtype=layer_dtype))
        self._mlp = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._mlp(input)
