"""Eviction policies of managed collision (TorchRec's `MCHEvictionPolicy` family), semantics.md 11.2-11.4.

A policy names the metadata the MCH module keeps per slot (`metadata_info`) and scores the slots and the new
candidates of an eviction round (higher = keep):

    LFU           s = count                                      (int64)
    LRU           s = -(cur - last_access + 1)^e                 (float32 for a float e)
    DistanceLFU   s = count / (cur - last_access + 1)^e          (float32)

The methods below are TorchRec's policy interface, written over torch tensors the straightforward way (a full
stable sort of the Z + m scores), so a policy object works wherever TorchRec's does. The MCH module of this
package does not call them for these three classes: it runs the same round on the kernels of
`accel.kernels.mc_eviction` (`_round_kind`, `_decay_exponent`), with the same results. A user-defined
subclass is run through the methods.
"""

from __future__ import annotations

import abc
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch

from accel.kernels import mc_eviction

__all__ = [
    "DistanceLFU_EvictionPolicy",
    "LFU_EvictionPolicy",
    "LRU_EvictionPolicy",
    "MCHEvictionPolicy",
    "MCHEvictionPolicyMetadataInfo",
]

MAX_ID = torch.iinfo(torch.int64).max
ThresholdFilter = Callable[[torch.Tensor], Tuple[torch.Tensor, Union[float, torch.Tensor]]]


class MCHEvictionPolicyMetadataInfo(NamedTuple):
    """One metadata array: `_mch_<name>` per slot when is_mch_metadata, `_history_<name>` per window entry
    when is_history_metadata."""

    metadata_name: str
    is_mch_metadata: bool
    is_history_metadata: bool


_COUNTS = MCHEvictionPolicyMetadataInfo("counts", True, False)
_LAST = MCHEvictionPolicyMetadataInfo("last_access_iter", True, True)


class MCHEvictionPolicy(abc.ABC):
    """Base of the eviction policies: (metadata_info, threshold_filtering_func=None).

    threshold_filtering_func(c) -> (mask or index, threshold) picks the unique ids of a round that may enter.
    """

    # Kernel round this class runs as (mc_eviction.LFU / LRU / DISTANCE_LFU); None: through the methods.
    _round_kind: Optional[int] = None

    def __init__(
        self,
        metadata_info: List[MCHEvictionPolicyMetadataInfo],
        threshold_filtering_func: Optional[ThresholdFilter] = None,
    ) -> None:
        self._metadata_info = metadata_info
        self._threshold_filtering_func = threshold_filtering_func
        self._decay_exponent: float = 1.0

    @property
    @abc.abstractmethod
    def metadata_info(self) -> List[MCHEvictionPolicyMetadataInfo]:
        ...

    @abc.abstractmethod
    def record_history_metadata(
        self, current_iter: int, incoming_ids: torch.Tensor, history_metadata: Dict[str, torch.Tensor]
    ) -> None:
        """Fill the history metadata slices of the incoming ids."""

    @abc.abstractmethod
    def coalesce_history_metadata(
        self,
        current_iter: int,
        history_metadata: Dict[str, torch.Tensor],
        unique_ids_counts: torch.Tensor,
        unique_inverse_mapping: torch.Tensor,
        additional_ids: Optional[torch.Tensor] = None,
        threshold_mask: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Per unique id of the window: its metadata (unique-id order, filtered by threshold_mask)."""

    @abc.abstractmethod
    def update_metadata_and_generate_eviction_scores(
        self,
        current_iter: int,
        mch_size: int,
        coalesced_history_argsort_mapping: torch.Tensor,
        coalesced_history_sorted_unique_ids_counts: torch.Tensor,
        coalesced_history_mch_matching_elements_mask: torch.Tensor,
        coalesced_history_mch_matching_indices: torch.Tensor,
        mch_metadata: Dict[str, torch.Tensor],
        coalesced_history_metadata: Dict[str, torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Update the table metadata in place; return (evicted slot indices, selected candidate indices)."""

    def _compute_selected_eviction_and_replacement_indices(
        self, pivot: int, eviction_scores: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """r = stable_argsort(s, descending); ev = [i in r[pivot:] if i < pivot]; sel = [i - pivot in
        r[:pivot] if i >= pivot] (rank order)."""
        r = torch.argsort(eviction_scores, descending=True, stable=True)
        keep, drop = r[:pivot], r[pivot:]
        return drop[drop < pivot], keep[keep >= pivot] - pivot


def _last_access(cur, history, counts, inverse, additional_ids, mask) -> torch.Tensor:
    # la_j = max of the window's iterations of unique id j (entries of additional_ids count as cur).
    last = history["last_access_iter"]
    if additional_ids is not None:
        last = torch.cat([last, torch.full_like(additional_ids, cur)])
    la = torch.zeros_like(counts).scatter_reduce_(0, inverse, last, reduce="amax", include_self=False)
    return la if mask is None else la[mask]


def _round(policy, cur, Z, order, fc, matched, matched_idx, meta, coalesced, score) -> Tuple[torch.Tensor, torch.Tensor]:
    # Steps 7-12 over the metadata the policy keeps; `score(merged)` gives the eviction scores.
    new = {}
    if "counts" in meta:
        meta["counts"][matched_idx] += fc[matched]
        new["counts"] = fc[~matched]
        meta["counts"][Z - 1] = MAX_ID
    if "last_access_iter" in meta:
        fla = coalesced["last_access_iter"][order]
        meta["last_access_iter"][matched_idx] = fla[matched]
        new["last_access_iter"] = fla[~matched]
        meta["last_access_iter"][Z - 1] = cur
    merged = {name: torch.cat([meta[name], new[name]]) for name in new}
    ev, sel = policy._compute_selected_eviction_and_replacement_indices(Z, score(merged))
    for name in new:
        meta[name][ev] = new[name][sel]
    return ev, sel


class LFU_EvictionPolicy(MCHEvictionPolicy):
    """s = count (int64): the least frequently seen ids leave first; residents win ties."""

    _round_kind = mc_eviction.LFU

    def __init__(self, threshold_filtering_func: Optional[ThresholdFilter] = None) -> None:
        super().__init__([_COUNTS], threshold_filtering_func)

    @property
    def metadata_info(self) -> List[MCHEvictionPolicyMetadataInfo]:
        return self._metadata_info

    def record_history_metadata(self, current_iter, incoming_ids, history_metadata) -> None:
        """No history metadata."""

    def coalesce_history_metadata(self, current_iter, history_metadata, unique_ids_counts, unique_inverse_mapping,
                                  additional_ids=None, threshold_mask=None) -> Dict[str, torch.Tensor]:
        return {}

    def update_metadata_and_generate_eviction_scores(self, current_iter, mch_size, coalesced_history_argsort_mapping,
                                                     coalesced_history_sorted_unique_ids_counts,
                                                     coalesced_history_mch_matching_elements_mask,
                                                     coalesced_history_mch_matching_indices, mch_metadata,
                                                     coalesced_history_metadata):
        return _round(self, current_iter, mch_size, coalesced_history_argsort_mapping,
                      coalesced_history_sorted_unique_ids_counts, coalesced_history_mch_matching_elements_mask,
                      coalesced_history_mch_matching_indices, mch_metadata, coalesced_history_metadata,
                      lambda merged: merged["counts"])


class _RecencyPolicy(MCHEvictionPolicy):
    # Shared by LRU and DistanceLFU: the last-access history and its coalesce.

    def __init__(self, metadata_info, decay_exponent: float, threshold_filtering_func) -> None:
        super().__init__(metadata_info, threshold_filtering_func)
        self._decay_exponent = decay_exponent

    @property
    def metadata_info(self) -> List[MCHEvictionPolicyMetadataInfo]:
        return self._metadata_info

    def record_history_metadata(self, current_iter, incoming_ids, history_metadata) -> None:
        """history last_access_iter slice = cur."""
        history_metadata["last_access_iter"][:] = current_iter

    def coalesce_history_metadata(self, current_iter, history_metadata, unique_ids_counts, unique_inverse_mapping,
                                  additional_ids=None, threshold_mask=None) -> Dict[str, torch.Tensor]:
        """last_access_iter_j = max of the window's iterations of unique id j, then masked."""
        return {"last_access_iter": _last_access(current_iter, history_metadata, unique_ids_counts,
                                                 unique_inverse_mapping, additional_ids, threshold_mask)}

    def _score(self, cur: int, merged: Dict[str, torch.Tensor]) -> torch.Tensor:
        # The class docstrings' formulas, as the same torch operations as mc_eviction.scores.
        distance = torch.pow(cur - merged["last_access_iter"] + 1, self._decay_exponent)
        if self._round_kind == mc_eviction.LRU:
            return torch.neg(distance)
        return torch.div(merged["counts"], distance)

    def update_metadata_and_generate_eviction_scores(self, current_iter, mch_size, coalesced_history_argsort_mapping,
                                                     coalesced_history_sorted_unique_ids_counts,
                                                     coalesced_history_mch_matching_elements_mask,
                                                     coalesced_history_mch_matching_indices, mch_metadata,
                                                     coalesced_history_metadata):
        return _round(self, current_iter, mch_size, coalesced_history_argsort_mapping,
                      coalesced_history_sorted_unique_ids_counts, coalesced_history_mch_matching_elements_mask,
                      coalesced_history_mch_matching_indices, mch_metadata, coalesced_history_metadata,
                      lambda merged: self._score(current_iter, merged))


class LRU_EvictionPolicy(_RecencyPolicy):
    """s = -(cur - last_access + 1)^decay_exponent: the least recently seen ids leave first."""

    _round_kind = mc_eviction.LRU

    def __init__(self, decay_exponent: float = 1.0, threshold_filtering_func: Optional[ThresholdFilter] = None) -> None:
        super().__init__([_LAST], decay_exponent, threshold_filtering_func)


class DistanceLFU_EvictionPolicy(_RecencyPolicy):
    """s = count / (cur - last_access + 1)^decay_exponent: frequency discounted by distance."""

    _round_kind = mc_eviction.DISTANCE_LFU

    def __init__(self, decay_exponent: float = 1.0, threshold_filtering_func: Optional[ThresholdFilter] = None) -> None:
        super().__init__([_COUNTS, _LAST], decay_exponent, threshold_filtering_func)
