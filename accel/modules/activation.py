"""SwishLayerNorm: drop-in for `torchrec.modules.activation`, one fused kernel forward and backward."""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import nn

from accel.kernels.swish_layernorm import swish_layernorm
from accel.modules._init import DeviceLike, check_dtype


_HALF = (torch.float16, torch.bfloat16)


class SwishLayerNorm(nn.Module):
    """Y = X * sigmoid(LayerNorm(X)), LayerNorm over the trailing `input_dims` (biased variance, eps 1e-5).

    Shapes: input (*, *input_dims) -> same shape; norm.0.weight, norm.0.bias: input_dims
    (an int d means (d,)), initialised 1 and 0. The parameters live in `norm`, a Sequential of
    nn.LayerNorm and nn.Sigmoid as in TorchRec, so state_dicts load unchanged; the forward
    reads them and calls the fused kernel (accel.kernels.swish_layernorm).
    `dtype` (an addition; TorchRec's parameters are always float32) sets the parameters' dtype.
    """

    def __init__(
        self,
        input_dims: Union[int, List[int], torch.Size],
        device: DeviceLike = None,
        *,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dims = [input_dims] if isinstance(input_dims, int) else list(input_dims)
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"input_dims must be a positive int or a non-empty list of them, got {input_dims!r}")
        self.norm = nn.Sequential(nn.LayerNorm(input_dims, device=device, dtype=dtype), nn.Sigmoid())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        layer_norm = self.norm[0]
        shape = tuple(layer_norm.normalized_shape)
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape) :]) != shape:
            raise ValueError(
                f"input must end in the normalized dimensions input_dims={list(shape)}, got shape {tuple(input.shape)}"
            )
        # TorchRec accepts half-precision input with float32 parameters (torch's LayerNorm rule) and
        # returns the input's dtype; the kernel computes such rows in float32.
        if not (input.dtype in _HALF and layer_norm.weight.dtype == torch.float32):
            check_dtype(input, layer_norm.weight)
        return swish_layernorm(input, layer_norm.weight, layer_norm.bias, eps=layer_norm.eps)
