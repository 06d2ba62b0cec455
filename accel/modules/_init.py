"""Shared construction helpers: TorchRec's parameter initialisers and the checks at each forward's boundary.

Random parameters are drawn exactly where TorchRec draws them (a default-dtype tensor on the
default device, global generator) and only then moved to the requested `device`/`dtype`. So
after `torch.manual_seed(s)` an accel module holds TorchRec's values whatever `device`/`dtype`
it was given, and `dtype=torch.float64` holds the same values as `module.double()`.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

DeviceLike = Optional[Union[str, torch.device]]


def xavier_normal_parameter(
    shape: Sequence[int], device: DeviceLike = None, dtype: Optional[torch.dtype] = None
) -> nn.Parameter:
    """W ~ N(0, 2 / (fan_in + fan_out)), one draw over `shape` in row-major order (TorchRec's kernels)."""
    w = torch.empty(*shape)
    nn.init.xavier_normal_(w)
    return nn.Parameter(w.to(device=device, dtype=dtype))


def zeros_parameter(
    shape: Sequence[int], device: DeviceLike = None, dtype: Optional[torch.dtype] = None
) -> nn.Parameter:
    """b = 0 (TorchRec's cross-net biases; no RNG)."""
    return nn.Parameter(torch.zeros(*shape, device=device, dtype=dtype))


def bias_free_linear(
    in_features: int, out_features: int, device: DeviceLike = None, dtype: Optional[torch.dtype] = None
) -> nn.Linear:
    """nn.Linear(in, out, bias=False): W ~ U(-1/sqrt(in), 1/sqrt(in)), drawn as TorchRec draws its gates."""
    return nn.Linear(in_features, out_features, bias=False).to(device=device, dtype=dtype)


def check_count(name: str, value: object, minimum: int) -> int:
    """Validate a structural integer argument (sizes, layer counts): an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_dense_input(
    input: object,
    params: Iterable[torch.Tensor],
    features: int,
    ndim: Optional[int] = None,
    name: str = "input",
) -> None:
    """Raise a clear error unless `input` is a tensor [..., features] in the parameters' dtype.

    `ndim` pins the number of dimensions (the cross nets other than LowRankCrossNet take only
    [B, N]). With no parameters (zero layers) any floating dtype is accepted.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if ndim is not None and input.dim() != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D [batch_size, in_features={features}], got shape {tuple(input.shape)}"
        )
    if input.dim() == 0 or input.shape[-1] != features:
        raise ValueError(
            f"{name} must have last dimension in_features={features}, got shape {tuple(input.shape)}"
        )
    reference = next(iter(params), None)
    check_dtype(input, reference, name)


def check_dtype(input: torch.Tensor, reference: Optional[torch.Tensor], name: str = "input") -> None:
    """accel computes in the parameters' dtype; a different input dtype is an error, not a promotion."""
    if reference is None:
        if not input.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {input.dtype}")
        return
    if input.dtype != reference.dtype:
        raise TypeError(
            f"{name} has dtype {input.dtype}, expected {reference.dtype} (the module's parameter dtype); "
            f"cast the input or the module (module.to({input.dtype}))"
        )
