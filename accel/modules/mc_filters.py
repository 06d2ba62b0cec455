"""Threshold filters of managed collision (TorchRec's `dynamic_threshold_filter`, `average_threshold_filter`,
`probabilistic_threshold_filter`): which ids of an eviction round may enter the table.

Each takes the per-unique-id counts c of the round (1-D, unique ids ascending) and returns (mask, threshold);
the MCH module keeps the ids where mask is True. Semantics: semantics.md 11.1.
"""

from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["average_threshold_filter", "dynamic_threshold_filter", "probabilistic_threshold_filter"]


@torch.no_grad()
def dynamic_threshold_filter(
    id_counts: torch.Tensor, threshold_skew_multiplier: float = 10.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """mask = c > (1 / n) * multiplier * sum(c), n = len(c) (strict; the threshold a 0-d tensor).

    An empty c raises ZeroDivisionError, as TorchRec does (the MCH module never filters an empty round).
    """
    threshold = (1 / id_counts.numel()) * threshold_skew_multiplier * id_counts.sum()
    return id_counts > threshold, threshold


@torch.no_grad()
def average_threshold_filter(id_counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """mask = c > mean(c) (strict), the mean taken in float32 (nan for an empty c)."""
    if id_counts.dtype != torch.float32:
        id_counts = id_counts.float()
    threshold = id_counts.mean()
    return id_counts > threshold, threshold


@torch.no_grad()
def probabilistic_threshold_filter(
    id_counts: torch.Tensor, per_id_probability: float = 0.01
) -> Tuple[torch.Tensor, torch.Tensor]:
    """mask = 1 - (1 - p)^c > r, r = torch.rand(len(c)) (float32; one draw of torch's global RNG per id).

    Returns the random draws as the threshold. 100 occurrences at p = 0.01 pass with probability 0.634.
    """
    probability = torch.full_like(id_counts, 1 - per_id_probability, dtype=torch.float32)
    score = 1 - torch.pow(probability, id_counts)
    threshold = torch.rand(id_counts.size(), device=id_counts.device)
    return score > threshold, threshold
