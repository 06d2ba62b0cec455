"""DeepFM and FactorizationMachine: drop-ins for `torchrec.modules.deepfm`."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from accel.kernels.fm import fm_interaction


def flatten_embeddings(embeddings: List[torch.Tensor]) -> torch.Tensor:
    """flat = [e_0.flatten(1) | e_1.flatten(1) | ...]: each (B, ...) row-major after dim 0, in list order.

    Shapes: embeddings[i] (B, ...) -> (B, sum_i prod(e_i.shape[1:])). A single tensor is returned
    as a view where its layout allows (flatten copies only a non-contiguous input).
    """
    if isinstance(embeddings, torch.Tensor) or not isinstance(embeddings, (list, tuple)):
        raise TypeError(f"embeddings must be a list of tensors, got {type(embeddings).__name__}")
    if len(embeddings) == 0:
        raise ValueError("embeddings must hold at least one tensor, got an empty list")
    batch_size = None
    for i, e in enumerate(embeddings):
        if not isinstance(e, torch.Tensor):
            raise TypeError(f"embeddings[{i}] must be a torch.Tensor, got {type(e).__name__}")
        if e.dim() < 2:
            raise ValueError(f"embeddings[{i}] must be at least 2-D (batch_size, ...), got shape {tuple(e.shape)}")
        if batch_size is None:
            batch_size = e.shape[0]
        elif e.shape[0] != batch_size:
            raise ValueError(
                f"embeddings[{i}] has batch size {e.shape[0]}, expected {batch_size} (that of embeddings[0])"
            )
    if len(embeddings) == 1:
        return embeddings[0].flatten(1)
    return torch.cat([e.flatten(1) for e in embeddings], dim=1)


class DeepFM(nn.Module):
    """y = dense_module(flat), flat = the flattened concatenation of the embeddings (flatten_embeddings).

    Shapes: embeddings[i] (B, ...) -> whatever dense_module returns for (B, sum_i prod(e_i.shape[1:])).
    State: `dense_module.*` only.
    """

    def __init__(self, dense_module: nn.Module) -> None:
        super().__init__()
        if not isinstance(dense_module, nn.Module):
            raise TypeError(f"dense_module must be an nn.Module, got {type(dense_module).__name__}")
        self.dense_module = dense_module

    def forward(self, embeddings: List[torch.Tensor]) -> torch.Tensor:
        return self.dense_module(flatten_embeddings(embeddings))


class FactorizationMachine(nn.Module):
    """y = 1/2 ((sum_j flat_j)^2 - sum_j flat_j^2) = sum_{j<k} flat_j flat_k over ALL scalars of flat.

    TorchRec's formula: every embedding coordinate is a feature (D8; not the paper's
    per-dimension FM). Shapes: embeddings[i] (B, ...) -> (B, 1), in the input dtype (float32
    or float64). One fused kernel forward and backward (accel.kernels.fm). No parameters.
    """

    def forward(self, embeddings: List[torch.Tensor]) -> torch.Tensor:
        flat = flatten_embeddings(embeddings)
        if flat.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"embeddings must be float32 or float64 tensors, got dtype {flat.dtype}")
        return fm_interaction(flat.contiguous())
