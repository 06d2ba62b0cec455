"""Boundary checks for accel's sparse types and embedding ids, over torch tensors.

The layout checks (shapes, dtypes) read only tensor metadata and are `refimpl.validate`'s own,
run on the tensors unchanged. The content checks (signs, monotonicity, sums) run as torch ops on
the tensors' device and come back to the host as one boolean: one synchronisation per call on
CUDA, none more. Only when that boolean says something is wrong are the offending tensors copied
to the host, where `refimpl.validate` finds the first bad entry and words the error, so that
both packages raise the same message for the same input.

Tensors on the meta device (how TorchRec builds a model before materialising it) have shapes
and dtypes but no contents: on them the layout checks run and the content checks are skipped.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from refimpl import validate as spec
from refimpl.validate import (  # noqa: F401  (re-exported: host-only checks, no tensor data read)
    MissingKeyError,
    missing_key,
    reject_variable_batch,
    validate_keyed_tensor,
    validate_keys,
)

__all__ = [
    "MissingKeyError",
    "has_contents",
    "missing_key",
    "reject_variable_batch",
    "validate_dense_lengths",
    "validate_ids_in_range",
    "validate_jagged",
    "validate_keyed_jagged",
    "validate_keyed_tensor",
    "validate_keys",
]


def check_same_device(values: torch.Tensor, name: str, **tensors: Optional[torch.Tensor]) -> None:
    """Every given tensor lives where `values` lives (kernels index them together)."""
    for arg, tensor in tensors.items():
        if tensor is not None and tensor.device != values.device:
            raise ValueError(
                f"{name}: {arg} expected device {values.device} (that of values), got {tensor.device}"
            )


def _host(tensor: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if tensor is None else tensor.detach().cpu().numpy()


def has_contents(*tensors: Optional[torch.Tensor]) -> bool:
    """False when a given tensor is on the meta device: it has a shape and a dtype but no values to check."""
    return not any(t is not None and t.device.type == "meta" for t in tensors)


def _any_true(flags: List[torch.Tensor]) -> bool:
    """The single device-to-host transfer of a validator; False for flags on the meta device (no contents)."""
    if not flags or not has_contents(*flags):
        return False
    return bool(torch.stack(flags).any().item())


def _disagreement(what: str) -> AssertionError:
    # Reached only if the device flags and refimpl's checks stop describing the same conditions.
    return AssertionError(f"{what}: a device check failed but the host check found nothing")


def jagged_content_flags(
    num_values: int, lengths: Optional[torch.Tensor], offsets: Optional[torch.Tensor]
) -> List[torch.Tensor]:
    """0-d booleans, each True when one content rule of `spec.check_jagged_contents` fails."""
    flags = []
    if offsets is not None:
        flags += [offsets[0] != 0, offsets[-1] != num_values]
        flags.append((offsets[1:] < offsets[:-1]).any())
    if lengths is not None:
        # A length above num_values is its own flag: such lengths can wrap the int64 sum onto num_values.
        flags += [(lengths < 0).any(), (lengths > num_values).any(), lengths.sum() != num_values]
        if offsets is not None:
            flags.append((offsets[1:] - offsets[:-1] != lengths).any())
    return flags


def validate_jagged(
    values: torch.Tensor,
    lengths: Optional[torch.Tensor],
    offsets: Optional[torch.Tensor],
    weights: Optional[torch.Tensor],
    name: str = "JaggedTensor",
) -> None:
    """refimpl.validate.validate_jagged's rules, plus one device for all parts."""
    check_same_device(values, name, lengths=lengths, offsets=offsets, weights=weights)
    spec.check_jagged_layout(values, lengths, offsets, weights, name)
    num_values = values.shape[0]
    if _any_true(jagged_content_flags(num_values, lengths, offsets)):
        spec.check_jagged_contents(num_values, _host(lengths), _host(offsets), name)
        raise _disagreement(name)


def validate_keyed_jagged(
    keys: Sequence[str],
    values: torch.Tensor,
    lengths: Optional[torch.Tensor],
    offsets: Optional[torch.Tensor],
    weights: Optional[torch.Tensor],
    stride: Optional[int] = None,
    name: str = "KeyedJaggedTensor",
    allow_duplicate_keys: bool = False,
) -> int:
    """refimpl.validate.validate_keyed_jagged's rules, plus one device for all parts. Returns B."""
    check_same_device(values, name, lengths=lengths, offsets=offsets, weights=weights)
    batch = spec.check_keyed_jagged_layout(
        keys, values, lengths, offsets, weights, stride, name, allow_duplicate_keys
    )
    num_values = values.shape[0]
    if _any_true(jagged_content_flags(num_values, lengths, offsets)):
        spec.check_jagged_contents(num_values, _host(lengths), _host(offsets), name, keys, batch)
        raise _disagreement(name)
    return batch


def validate_dense_lengths(
    values: torch.Tensor,
    lengths: torch.Tensor,
    weights: Optional[torch.Tensor],
    name: str = "JaggedTensor.from_dense_lengths",
) -> None:
    """values [B, N] or [B, N, D], lengths [B] with 0 <= lengths[b] <= N, weights [B, N]."""
    check_same_device(values, name, lengths=lengths, weights=weights)
    spec.check_dense_lengths_layout(values, lengths, weights, name)
    width = values.shape[1]
    if _any_true([((lengths < 0) | (lengths > width)).any()]):
        spec.check_dense_lengths_contents(width, _host(lengths), name)
        raise _disagreement(name)


def validate_ids_in_range(ids: torch.Tensor, num_embeddings: int, feature: str, table: str) -> None:
    """0 <= id < num_embeddings for every id of `feature` looked up in `table` (IndexError); ids on the meta
    device have no values, so only their layout is checked."""
    spec.check_ids_layout(ids, num_embeddings, feature, table)
    if _any_true([((ids < 0) | (ids >= num_embeddings)).any()]):
        spec.validate_ids_in_range(_host(ids), num_embeddings, feature, table)
        raise _disagreement(f"feature '{feature}' (table '{table}')")
