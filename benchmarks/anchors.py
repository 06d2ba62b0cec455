"""Plain-torch transcriptions of how TorchRec 1.8 computes its dense modules.

The anchor the benchmarks compare against is TorchRec itself when it is importable; these classes
stand in for it otherwise (`scripts/install-torchrec.sh` installs it). Each one has TorchRec's
constructor, state_dict keys and shapes, and evaluates the forward with the same sequence of
torch ops TorchRec uses, so that its timing is TorchRec's and not a faster rewrite:

- cross nets keep the input as a column `(B, N, 1)` and do a batched matrix-vector product per
  layer (`matmul(W, x_l)`), not one `(B, N) x (N, N)` GEMM;
- VectorCrossNet contracts with `tensordot`; LowRankMixtureCrossNet loops over the experts;
- FactorizationMachine takes the square of the sum minus the sum of squares over the flat input;
- SwishLayerNorm is `x * sigmoid(layer_norm(x))`; MLP is Linear followed by ReLU per layer.

Nothing here is optimised on purpose.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Union

import torch
from torch import nn

Activation = Callable[[torch.Tensor], torch.Tensor]


def _xavier_normal_list(shapes: Sequence[Sequence[int]]) -> nn.ParameterList:
    return nn.ParameterList(
        nn.Parameter(nn.init.xavier_normal_(torch.empty(*shape))) for shape in shapes
    )


def _zeros_list(shapes: Sequence[Sequence[int]]) -> nn.ParameterList:
    return nn.ParameterList(nn.Parameter(torch.zeros(*shape)) for shape in shapes)


class CrossNet(nn.Module):
    """x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, one batched matrix-vector product per layer.
    Shapes: input (B, N) -> (B, N); kernels.{l} (N, N); bias.{l} (N, 1)."""

    def __init__(self, in_features: int, num_layers: int) -> None:
        super().__init__()
        self._num_layers = num_layers
        self.kernels = _xavier_normal_list([(in_features, in_features)] * num_layers)
        self.bias = _zeros_list([(in_features, 1)] * num_layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x_0 = input.unsqueeze(2)
        x_l = x_0
        for layer in range(self._num_layers):
            x_l_w = torch.matmul(self.kernels[layer], x_l)
            x_l = x_0 * (x_l_w + self.bias[layer]) + x_l
        return x_l.squeeze(2)


class LowRankCrossNet(nn.Module):
    """x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l, as two `linear` calls per layer.
    Shapes: input (*, N) -> (*, N); W_kernels.{l} (N, r); V_kernels.{l} (r, N); bias.{l} (N,)."""

    def __init__(self, in_features: int, num_layers: int, low_rank: int = 1) -> None:
        super().__init__()
        self._num_layers = num_layers
        self.W_kernels = _xavier_normal_list([(in_features, low_rank)] * num_layers)
        self.V_kernels = _xavier_normal_list([(low_rank, in_features)] * num_layers)
        self.bias = _zeros_list([(in_features,)] * num_layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x_0 = input
        x_l = x_0
        for layer in range(self._num_layers):
            v_x = nn.functional.linear(x_l, self.V_kernels[layer])
            w_v_x = nn.functional.linear(v_x, self.W_kernels[layer])
            x_l = x_0 * (w_v_x + self.bias[layer]) + x_l
        return x_l


class VectorCrossNet(nn.Module):
    """x_{l+1} = x_0 (x_l . w_l) + b_l + x_l, the scalar from `tensordot`, the bias outside.
    Shapes: input (B, N) -> (B, N); kernels.{l} (N, 1); bias.{l} (N, 1)."""

    def __init__(self, in_features: int, num_layers: int) -> None:
        super().__init__()
        self._num_layers = num_layers
        self.kernels = _xavier_normal_list([(in_features, 1)] * num_layers)
        self.bias = _zeros_list([(in_features, 1)] * num_layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x_0 = input.unsqueeze(2)
        x_l = x_0
        for layer in range(self._num_layers):
            s = torch.tensordot(x_l, self.kernels[layer], dims=([1], [0]))  # (B, 1, 1)
            x_l = torch.matmul(x_0, s) + self.bias[layer] + x_l
        return x_l.squeeze(2)


class LowRankMixtureCrossNet(nn.Module):
    """x_{l+1} = sum_i softmax_i(w_i . x_l) x_0 * (U_li g(C_li g(V_li x_l)) + b_l) + x_l,
    one expert at a time (no gate when num_experts == 1).
    Shapes: input (B, N) -> (B, N); U_kernels.{l} (K, N, r); V_kernels.{l} (K, r, N);
    bias.{l} (N, 1); gates.{i}.weight (1, N); C_kernels.{l} (K, r, r)."""

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        num_experts: int = 1,
        low_rank: int = 1,
        activation: Union[nn.Module, Activation] = torch.relu,
    ) -> None:
        super().__init__()
        self._num_layers = num_layers
        self._num_experts = num_experts
        n, k, r = in_features, num_experts, low_rank
        # Creation order is TorchRec's: it fixes the RNG stream and the state_dict key order.
        self.U_kernels = _xavier_normal_list([(k, n, r)] * num_layers)
        self.V_kernels = _xavier_normal_list([(k, r, n)] * num_layers)
        self.bias = _zeros_list([(n, 1)] * num_layers)
        self.gates = (
            nn.ModuleList(nn.Linear(n, 1, bias=False) for _ in range(k)) if k > 1 else None
        )
        self.C_kernels = _xavier_normal_list([(k, r, r)] * num_layers)
        self._activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        g = self._activation
        x_0 = input.unsqueeze(2)
        x_l = x_0
        for layer in range(self._num_layers):
            experts: List[torch.Tensor] = []
            logits: List[torch.Tensor] = []
            for i in range(self._num_experts):
                if self.gates is not None:
                    logits.append(self.gates[i](x_l.squeeze(2)))
                v_x = g(torch.matmul(self.V_kernels[layer][i], x_l))
                c_v_x = g(torch.matmul(self.C_kernels[layer][i], v_x))
                u_c_v_x = torch.matmul(self.U_kernels[layer][i], c_v_x)
                experts.append((x_0 * (u_c_v_x + self.bias[layer])).squeeze(2))
            stacked = torch.stack(experts, 2)  # (B, N, K)
            if self.gates is None:
                mixed = stacked.squeeze(2)
            else:
                gating = torch.softmax(torch.stack(logits, 1), dim=1)  # (B, K, 1)
                mixed = torch.matmul(stacked, gating).squeeze(2)
            x_l = mixed.unsqueeze(2) + x_l
        return x_l.squeeze(2)


def _flatten_and_concat(embeddings: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat([e.flatten(1) for e in embeddings], dim=1)


class FactorizationMachine(nn.Module):
    """FM(x) = 1/2 ((sum_j x_j)^2 - sum_j x_j^2) over every scalar of the flattened input.
    Shapes: list of (B, ...) -> (B, 1)."""

    def forward(self, embeddings: List[torch.Tensor]) -> torch.Tensor:
        flat = _flatten_and_concat(embeddings)
        square_of_sum = torch.pow(torch.sum(flat, dim=1, keepdim=True), 2)
        sum_of_square = torch.sum(flat * flat, dim=1, keepdim=True)
        return 0.5 * (square_of_sum - sum_of_square)


class DeepFM(nn.Module):
    """y = dense_module(cat_j flatten(e_j)).
    Shapes: list of (B, ...) -> whatever dense_module returns."""

    def __init__(self, dense_module: nn.Module) -> None:
        super().__init__()
        self.dense_module = dense_module

    def forward(self, embeddings: List[torch.Tensor]) -> torch.Tensor:
        return self.dense_module(_flatten_and_concat(embeddings))


class SwishLayerNorm(nn.Module):
    """y = x * sigmoid(LayerNorm(x)), LayerNorm over the trailing `input_dims`.
    Shapes: (*, input_dims) -> same; norm.0.weight, norm.0.bias of shape input_dims."""

    def __init__(self, input_dims: Union[int, List[int], torch.Size]) -> None:
        super().__init__()
        self.norm = nn.Sequential(nn.LayerNorm(input_dims))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input * torch.sigmoid(self.norm(input))


class Perceptron(nn.Module):
    """y = activation(x W^T + b).
    Shapes: (*, in_size) -> (*, out_size); _linear.weight (out, in); _linear.bias (out,)."""

    def __init__(
        self, in_size: int, out_size: int, bias: bool = True, activation: Activation = torch.relu
    ) -> None:
        super().__init__()
        self._linear = nn.Linear(in_size, out_size, bias=bias)
        self._activation_fn = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._activation_fn(self._linear(input))


class MLP(nn.Module):
    """y = P_{L-1}( ... P_0(x)), P_i a Perceptron (Linear then ReLU).
    Shapes: (*, in_size) -> (*, layer_sizes[-1]); keys _mlp.{i}._linear.weight / .bias."""

    def __init__(
        self,
        in_size: int,
        layer_sizes: List[int],
        bias: bool = True,
        activation: Activation = torch.relu,
    ) -> None:
        super().__init__()
        sizes = [in_size] + list(layer_sizes)
        self._mlp = nn.Sequential(
            *(
                Perceptron(sizes[i], sizes[i + 1], bias=bias, activation=activation)
                for i in range(len(layer_sizes))
            )
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._mlp(input)
