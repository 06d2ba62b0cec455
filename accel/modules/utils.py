"""Module-building helpers of `torchrec.modules.utils`: activation factories, output-size probes, module grids."""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Sequence, Union

import torch
from torch import nn

TensorFn = Callable[[torch.Tensor], torch.Tensor]


def extract_module_or_tensor_callable(
    module_or_callable: Union[Callable[[], nn.Module], nn.Module, TensorFn],
) -> Union[nn.Module, TensorFn]:
    """A zero-argument factory -> factory() (a fresh module); a Tensor -> Tensor callable -> itself.

    The kind is found by calling with no argument, as TorchRec does: a TypeError about a
    missing required positional argument marks a function such as torch.relu, or a module
    instance whose forward needs an input (returned as is, hence shared by whoever uses it).
    Any other TypeError from the call propagates; a factory returning a non-module is a ValueError.
    """
    if not callable(module_or_callable):
        raise TypeError(
            "module_or_callable must be a module factory, an nn.Module or a callable Tensor -> Tensor, "
            f"got {type(module_or_callable).__name__}"
        )
    try:
        module = module_or_callable()
    except TypeError as e:
        if "required positional argument" in str(e):
            return module_or_callable
        raise
    if not isinstance(module, nn.Module):
        raise ValueError(
            "module_or_callable: expected a callable that takes no input to return a torch.nn.Module, "
            f"got a callable returning {type(module).__name__}"
        )
    return module


def get_module_output_dimension(module: Union[TensorFn, nn.Module], in_features: int) -> int:
    """d_out = module(zeros(1, in_features)).size(-1).

    The probe is float32 on the CPU as in TorchRec, except that a module with parameters gets
    the probe in its first parameter's dtype and device (so float64 and CUDA modules work).
    """
    dtype, device = torch.float32, None
    if isinstance(module, nn.Module):
        first = next(module.parameters(), None)
        if first is not None:
            dtype, device = first.dtype, first.device
    output = module(torch.zeros(1, in_features, dtype=dtype, device=device))
    return output.size(-1)


def check_module_output_dimension(
    module: Union[Iterable[nn.Module], nn.Module], in_features: int, out_features: int
) -> bool:
    """True iff every module (recursing into lists and ModuleLists) maps in_features to out_features."""
    if isinstance(module, (list, nn.ModuleList)):
        return all(check_module_output_dimension(m, in_features, out_features) for m in module)
    return get_module_output_dimension(module, in_features) == out_features


@torch.no_grad()
def init_mlp_weights_xavier_uniform(m: nn.Module) -> None:
    """For an nn.Linear: W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)), then b = 0; other modules untouched.

    TorchRec fails with an AttributeError on a Linear without bias; here that is a ValueError
    raised before any draw, so the weight is not left half-initialised.
    """
    if not isinstance(m, nn.Linear):
        return
    if m.bias is None:
        raise ValueError(
            f"init_mlp_weights_xavier_uniform: m must be an nn.Linear with a bias, got {m} with bias=None"
        )
    nn.init.xavier_uniform_(m.weight)
    m.bias.fill_(0.0)


def construct_modulelist_from_single_module(module: nn.Module, sizes: Sequence[int]) -> nn.Module:
    """Nested ModuleList of shape `sizes` whose leaves are deep copies of `module`, Linears re-drawn.

    Each leaf is re-initialised with init_mlp_weights_xavier_uniform as it is copied, leaves in
    row-major order over `sizes` (TorchRec's RNG order); `module` itself is untouched.
    """
    sizes = tuple(sizes)
    if not sizes:
        raise ValueError("sizes must name at least one dimension, got ()")
    for i, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"sizes[{i}] must be an int >= 0, got {s!r}")
    if len(sizes) == 1:
        return nn.ModuleList(
            [copy.deepcopy(module).apply(init_mlp_weights_xavier_uniform) for _ in range(sizes[0])]
        )
    return nn.ModuleList([construct_modulelist_from_single_module(module, sizes[1:]) for _ in range(sizes[0])])


def convert_list_of_modules_to_modulelist(modules: Iterable[nn.Module], sizes: Sequence[int]) -> nn.Module:
    """Nested list of modules with shape `sizes` -> the same nesting as ModuleLists (modules kept, not copied)."""
    sizes = tuple(sizes)
    if not sizes:
        raise ValueError("sizes must name at least one dimension, got ()")
    try:
        modules = list(modules)
    except TypeError:
        raise TypeError(
            f"modules: expected an iterable of {sizes[0]} modules (sizes={sizes}), got {type(modules).__name__}"
        ) from None
    if len(modules) != sizes[0]:
        raise ValueError(
            f"modules: expected {sizes[0]} entries at this level (sizes={sizes}), got {len(modules)}"
        )
    if len(sizes) == 1:
        return nn.ModuleList(modules)
    return nn.ModuleList(convert_list_of_modules_to_modulelist(m, sizes[1:]) for m in modules)
