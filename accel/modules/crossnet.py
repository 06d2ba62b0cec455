"""Cross networks (DCN, DCN-V2 low rank and mixture of experts): drop-ins for `torchrec.modules.crossnet`.

Batches are rows: `W_l . x_l` per sample is `x_l @ W_l.T` for the whole batch, one BLAS GEMM
per weight, with the cross product `x_0 * (...) + x_l` as one fused `addcmul` epilogue. The
parameters, their state_dict keys and their creation (RNG) order are TorchRec's.

CrossNet and LowRankCrossNet layers carry a hand-written backward (`CrossLayer`,
`LowRankCrossLayer`): autograd of addmm + addcmul makes several elementwise passes over the
(B, N) activations per layer, while the gradient needs only two products with g, one bias sum,
and the "+ g" of dx_l folded into its GEMM.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from accel.kernels.vector_cross import vector_cross_layer
from accel.modules._init import (
    DeviceLike,
    bias_free_linear,
    check_count,
    check_dense_input,
    xavier_normal_parameter,
    zeros_parameter,
)

Activation = Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]]


class CrossLayer(torch.autograd.Function):
    """x_{l+1} = x_0 * t + x_l, t = x_l @ W^T + b; one CrossNet layer with its own backward.

    With g = dL/dx_{l+1} and grad_t = g * x_0: dx_0 = g * t, db = sum_rows grad_t,
    dW = grad_t^T @ x_l, dx_l = g + grad_t @ W (one addmm). `bias` has shape (N, 1) and gets
    its gradient in that shape. Only the gradients in `ctx.needs_input_grad` are formed.
    Under create_graph t is formed again from the inputs, so the backward is itself differentiable.
    """

    @staticmethod
    def forward(ctx, x_0: torch.Tensor, x_l: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        t = torch.addmm(bias.view(-1), x_l, kernel.t())
        ctx.save_for_backward(x_0, x_l, kernel, bias, t)
        return torch.addcmul(x_l, x_0, t)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x_0, x_l, kernel, bias, t = ctx.saved_tensors
        if torch.is_grad_enabled():
            # The saved t was made without a graph; double backward needs its dependence on x_l, W, b.
            t = torch.addmm(bias.view(-1), x_l, kernel.t())
        need_x0, need_xl, need_w, need_b = ctx.needs_input_grad
        grad_x0 = g * t if need_x0 else None
        grad_xl = grad_w = grad_b = None
        if need_xl or need_w or need_b:
            grad_t = g * x_0
            if need_xl:
                grad_xl = torch.addmm(g, grad_t, kernel)
            if need_w:
                grad_w = torch.mm(grad_t.t(), x_l)
            if need_b:
                grad_b = grad_t.sum(0).view_as(bias)
        return grad_x0, grad_xl, grad_w, grad_b


class LowRankCrossLayer(torch.autograd.Function):
    """x_{l+1} = x_0 * t + x_l, t = (x_l @ V^T) @ W^T + b; one LowRankCrossNet layer with its own backward.

    With h = x_l @ V^T, grad_t = g * x_0 and grad_h = grad_t @ W: dx_0 = g * t,
    db = sum_rows grad_t, dW = grad_t^T @ h, dV = grad_h^T @ x_l, dx_l = g + grad_h @ V (one
    addmm). Only the gradients in `ctx.needs_input_grad` are formed. Under create_graph h and t
    are formed again from the inputs, so the backward is itself differentiable.
    """

    @staticmethod
    def forward(
        ctx, x_0: torch.Tensor, x_l: torch.Tensor, W: torch.Tensor, V: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        h = torch.mm(x_l, V.t())
        t = torch.addmm(bias, h, W.t())
        ctx.save_for_backward(x_0, x_l, W, V, bias, h, t)
        return torch.addcmul(x_l, x_0, t)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x_0, x_l, W, V, bias, h, t = ctx.saved_tensors
        if torch.is_grad_enabled():
            # h and t were saved without a graph; double backward needs their dependence on the inputs.
            h = torch.mm(x_l, V.t())
            t = torch.addmm(bias, h, W.t())
        need_x0, need_xl, need_w, need_v, need_b = ctx.needs_input_grad
        grad_x0 = g * t if need_x0 else None
        grad_xl = grad_w = grad_v = grad_b = None
        if need_xl or need_w or need_v or need_b:
            grad_t = g * x_0
            if need_w:
                grad_w = torch.mm(grad_t.t(), h)
            if need_b:
                grad_b = grad_t.sum(0)
            if need_xl or need_v:
                grad_h = torch.mm(grad_t, W)
                if need_v:
                    grad_v = torch.mm(grad_h.t(), x_l)
                if need_xl:
                    grad_xl = torch.addmm(g, grad_h, V)
        return grad_x0, grad_xl, grad_w, grad_v, grad_b


class CrossNet(nn.Module):
    """x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l, l = 0 .. num_layers-1.

    Shapes: input (B, N) -> (B, N); kernels.l (N, N); bias.l (N, 1).
    Init (TorchRec's order): every kernel ~ xavier_normal, then every bias = 0.
    Each layer is one GEMM with the bias folded in (addmm) and one fused addcmul; its backward
    is `CrossLayer`'s. `device`/`dtype` place the parameters after they are drawn (see accel.modules._init).
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        *,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self._in_features = check_count("in_features", in_features, 1)
        self._num_layers = check_count("num_layers", num_layers, 0)
        N = in_features
        self.kernels = nn.ParameterList(
            [xavier_normal_parameter((N, N), device, dtype) for _ in range(num_layers)]
        )
        self.bias = nn.ParameterList([zeros_parameter((N, 1), device, dtype) for _ in range(num_layers)])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_dense_input(input, self.parameters(), self._in_features, ndim=2)
        x_0 = input
        x_l = x_0
        for W_l, b_l in zip(self.kernels, self.bias):
            x_l = CrossLayer.apply(x_0, x_l, W_l, b_l)
        return x_l


class LowRankCrossNet(nn.Module):
    """x_{l+1} = x_0 * (W_l . (V_l . x_l) + b_l) + x_l, l = 0 .. num_layers-1.

    Shapes: input (*, N) -> (*, N); W_kernels.l (N, r); V_kernels.l (r, N); bias.l (N,).
    Init (TorchRec's order): every W ~ xavier_normal, then every V, then every bias = 0.
    Each layer is two GEMMs (the second with the bias folded in) and one fused addcmul; its
    backward is `LowRankCrossLayer`'s.
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        low_rank: int = 1,
        *,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self._in_features = check_count("in_features", in_features, 1)
        self._num_layers = check_count("num_layers", num_layers, 0)
        self._low_rank = check_count("low_rank", low_rank, 1)
        N, r = in_features, low_rank
        self.W_kernels = nn.ParameterList(
            [xavier_normal_parameter((N, r), device, dtype) for _ in range(num_layers)]
        )
        self.V_kernels = nn.ParameterList(
            [xavier_normal_parameter((r, N), device, dtype) for _ in range(num_layers)]
        )
        self.bias = nn.ParameterList([zeros_parameter((N,), device, dtype) for _ in range(num_layers)])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_dense_input(input, self.parameters(), self._in_features)
        # Leading dimensions are batch dimensions: fold them into GEMM rows.
        x_0 = input.reshape(-1, self._in_features)
        x_l = x_0
        for W_l, V_l, b_l in zip(self.W_kernels, self.V_kernels, self.bias):
            x_l = LowRankCrossLayer.apply(x_0, x_l, W_l, V_l, b_l)
        return x_l.reshape(input.shape)


class VectorCrossNet(nn.Module):
    """x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l, l = 0 .. num_layers-1 (TorchRec's formula, D3).

    The scalar x_l . w_l per sample scales x_0; the bias is added outside that product (the
    documentation page puts it inside). Shapes: input (B, N) -> (B, N); kernels.l (N, 1);
    bias.l (N, 1). Init (TorchRec's order): every kernel ~ xavier_normal (fan_in 1, fan_out N),
    then every bias = 0. Each layer is one fused kernel (accel.kernels.vector_cross).
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        *,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self._in_features = check_count("in_features", in_features, 1)
        self._num_layers = check_count("num_layers", num_layers, 0)
        N = in_features
        self.kernels = nn.ParameterList(
            [xavier_normal_parameter((N, 1), device, dtype) for _ in range(num_layers)]
        )
        self.bias = nn.ParameterList([zeros_parameter((N, 1), device, dtype) for _ in range(num_layers)])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_dense_input(input, self.parameters(), self._in_features, ndim=2)
        x_0 = input.contiguous()
        x_l = x_0
        for w_l, b_l in zip(self.kernels, self.bias):
            x_l = vector_cross_layer(x_0, x_l, w_l.view(-1), b_l.view(-1))
        return x_l


class LowRankMixtureCrossNet(nn.Module):
    """x_{l+1} = sum_i p_i(x_l) expert_i + x_l,  expert_i = x_0 * (U_li . g(C_li . g(V_li . x_l)) + b_l).

    p = softmax_i(gates_i . x_l) over the K experts; with K = 1 there are no gates and
    x_{l+1} = expert_0 + x_l. Shapes: input (B, N) -> (B, N); U_kernels.l (K, N, r);
    V_kernels.l (K, r, N); C_kernels.l (K, r, r); bias.l (N, 1); gates.i.weight (1, N) when K > 1.
    Init (TorchRec's order): every U ~ xavier_normal, every V, biases = 0, the K gates
    (nn.Linear(N, 1, bias=False)), then every C.

    All experts share each stage: V x_l for every expert is one GEMM against V stacked as
    (K r, N); C is one bmm; the gate logits are one GEMM against the gate weights stacked as (K, N).
    Since the softmax weights sum to one, sum_i p_i x_0 * (u_i + b) = x_0 * (sum_i p_i u_i + b),
    and sum_i p_i U_i h_i is one GEMM of the p-scaled activations (B, K r) against U stacked
    as (N, K r); so the mixture costs no per-expert pass. `activation` must be elementwise
    (it is applied to all experts' activations at once, laid out as (K r, B)).
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        num_experts: int = 1,
        low_rank: int = 1,
        activation: Activation = torch.relu,
        *,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self._in_features = check_count("in_features", in_features, 1)
        self._num_layers = check_count("num_layers", num_layers, 0)
        self._num_experts = check_count("num_experts", num_experts, 1)
        self._low_rank = check_count("low_rank", low_rank, 1)
        if not callable(activation):
            raise TypeError(
                f"activation must be an nn.Module or a callable Tensor -> Tensor, got {type(activation).__name__}"
            )
        N, K, r, L = in_features, num_experts, low_rank, num_layers
        self.U_kernels = nn.ParameterList([xavier_normal_parameter((K, N, r), device, dtype) for _ in range(L)])
        self.V_kernels = nn.ParameterList([xavier_normal_parameter((K, r, N), device, dtype) for _ in range(L)])
        self.bias = nn.ParameterList([zeros_parameter((N, 1), device, dtype) for _ in range(L)])
        self.gates: Optional[nn.ModuleList] = (
            nn.ModuleList([bias_free_linear(N, 1, device, dtype) for _ in range(K)]) if K > 1 else None
        )
        self._activation = activation
        self.C_kernels = nn.ParameterList([xavier_normal_parameter((K, r, r), device, dtype) for _ in range(L)])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_dense_input(input, self.parameters(), self._in_features, ndim=2)
        g = self._activation
        B, N, K, r = input.shape[0], self._in_features, self._num_experts, self._low_rank
        gate_weights = torch.cat([gate.weight for gate in self.gates], dim=0) if self.gates is not None else None
        x_0 = input
        x_l = x_0
        for U_l, V_l, C_l, b_l in zip(self.U_kernels, self.V_kernels, self.C_kernels, self.bias):
            # Expert activations are kept as (K, r, B) columns so that every stage is a plain
            # (b)mm on contiguous data and the U stage reads them as a transposed GEMM operand.
            v = g(torch.mm(V_l.reshape(K * r, N), x_l.t()))  # (K r, B): V_li . x_l, every expert
            h = g(torch.bmm(C_l, v.view(K, r, B)))  # (K, r, B)
            if gate_weights is not None:
                p = torch.softmax(torch.mm(gate_weights, x_l.t()), dim=0)  # (K, B)
                h = h * p.unsqueeze(1)
            U_stacked = U_l.permute(1, 0, 2).reshape(N, K * r)
            moe = torch.addmm(b_l.view(-1), h.reshape(K * r, B).t(), U_stacked.t())  # sum_i p_i U_li h_i + b_l
            x_l = torch.addcmul(x_l, x_0, moe)
        return x_l
