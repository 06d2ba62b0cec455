"""Eviction policies of managed collision: LFU, LRU and DistanceLFU (semantics.md 11.3 steps 7-12, 11.4).

An eviction round scores the Z table slots and the m new candidate ids together (higher score =
keep) and keeps the Z best: the candidates among them take the slots that fall out. Every scoring
rule is a module-level function whose docstring is its formula; the policy classes carry
TorchRec's interface (metadata names, history recording, coalescing, the in-place metadata update)
and call them.

Scores are computed in TorchRec's dtypes, so that ties break as in TorchRec: LFU in int64; LRU and
DistanceLFU in float32 (int64 distance powers for an int decay exponent). Where a score is a
power d^e of a distance, e in {1, 2, 3, -1, -2, 0} is exact; for other exponents torch's vectorised
float32 pow can differ from the correctly rounded one here in the last bit, which changes a
decision only between two scores within one ulp of each other (never for LRU, whose order depends
on the distance alone up to such near ties).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from refimpl.modules.mc_remap import MAX, last_access_per_id, stable_argsort_descending

__all__ = [
    "MCHEvictionPolicyMetadataInfo",
    "MCHEvictionPolicy",
    "LFU_EvictionPolicy",
    "LRU_EvictionPolicy",
    "DistanceLFU_EvictionPolicy",
    "lfu_scores",
    "lru_scores",
    "distance_lfu_scores",
    "select_evictions",
]

Array = np.ndarray
ThresholdFilter = Callable[[Array], Tuple[Any, Any]]


class MCHEvictionPolicyMetadataInfo(NamedTuple):
    """One per-slot metadata array of a policy: `_mch_<name>` in the table when is_mch_metadata,
    recorded per history entry when is_history_metadata."""

    metadata_name: str
    is_mch_metadata: bool
    is_history_metadata: bool


# --- scoring rules ------------------------------------------------------------------------------
def _is_int_exponent(e: Any) -> bool:
    return isinstance(e, (int, np.integer)) and not isinstance(e, (bool, np.bool_))


def _pow_f32(d: Array, e: float) -> Array:
    """d^e in float32, with torch's exact special cases for e = 2, 3 and -2 (products, not pow)."""
    if e == 2:
        return d * d
    if e == 3:
        return d * d * d
    if e == -2:
        return np.float32(1) / (d * d)
    if e == -1:
        return np.float32(1) / d
    return np.power(d, np.float32(e))


def _distance_power(cur: int, last: Array, e: Any) -> Array:
    """(cur - last + 1)^e: int64 for an int e, float32 otherwise."""
    d = np.int64(cur) - last.astype(np.int64) + 1
    if _is_int_exponent(e):
        if e < 0:
            raise ValueError(f"decay_exponent: an int exponent must be >= 0 (int64 powers), got {e}")
        return d ** np.int64(e)
    return _pow_f32(d.astype(np.float32), float(e))


def lfu_scores(counts: Array, candidate_counts: Array) -> Array:
    """s = [counts | n_c],  counts[Z - 1] pinned to MAX   (int64)

    Shapes: counts (Z,) table counts; candidate_counts n_c (m,) -> s (Z + m,) int64.
    Source: semantics.md 11.3 round steps 9-10 (LFU).
    """
    table = counts.astype(np.int64, copy=True)
    table[-1] = MAX
    return np.concatenate([table, candidate_counts.astype(np.int64)])


def lru_scores(cur: int, last: Array, candidate_last: Array, decay_exponent: Any = 1.0) -> Array:
    """s = -(cur - [last | n_la] + 1)^decay_exponent,  last[Z - 1] pinned to cur   (float32; int64 for an int exponent)

    Shapes: last (Z,) table last-access iterations; candidate_last n_la (m,) -> s (Z + m,).
    Source: semantics.md 11.3 round steps 9-10 (LRU): the most recent slot scores -1, the highest.
    """
    table = last.astype(np.int64, copy=True)
    table[-1] = cur
    return -_distance_power(cur, np.concatenate([table, candidate_last.astype(np.int64)]), decay_exponent)


def distance_lfu_scores(
    cur: int,
    counts: Array,
    last: Array,
    candidate_counts: Array,
    candidate_last: Array,
    decay_exponent: Any = 1.0,
) -> Array:
    """s = float32([counts | n_c]) / float32(cur - [last | n_la] + 1)^decay_exponent,
    counts[Z - 1] pinned to MAX, last[Z - 1] to cur   (float32; the sentinel scores 9.22e18)

    Shapes: counts, last (Z,); candidate_counts, candidate_last (m,) -> s (Z + m,) float32.
    Source: semantics.md 11.3 round steps 9-10 (DistanceLFU).
    """
    table_counts = counts.astype(np.int64, copy=True)
    table_counts[-1] = MAX
    table_last = last.astype(np.int64, copy=True)
    table_last[-1] = cur
    c = np.concatenate([table_counts, candidate_counts.astype(np.int64)]).astype(np.float32)
    distance = _distance_power(cur, np.concatenate([table_last, candidate_last.astype(np.int64)]), decay_exponent)
    return c / distance.astype(np.float32)


def select_evictions(pivot: int, scores: Array) -> Tuple[Array, Array]:
    """r = stable_argsort(s, descending);  sel = [i - Z for i in r[:Z] if i >= Z];  ev = [i for i in r[Z:] if i < Z]

    Shapes: scores s (Z + m,) over [table slots | candidates], pivot Z -> ev (k,) slots to give up,
    sel (k,) candidates to admit, both in descending-score order, so the best candidate takes the
    best-scored evicted slot. Ties keep concatenation order: table slots beat candidates.
    Source: semantics.md 11.3 round step 11.
    """
    r = stable_argsort_descending(scores)
    keep, drop = r[:pivot], r[pivot:]
    sel = keep[keep >= pivot] - pivot
    ev = drop[drop < pivot]
    return ev.astype(np.int64), sel.astype(np.int64)


# --- the policy interface ---------------------------------------------------------------------
class MCHEvictionPolicy(ABC):
    """A rule for ranking table slots against new ids (TorchRec's MCHEvictionPolicy interface).

    threshold_filtering_func(c) -> (mask, threshold), when given, filters the unique ids of a round
    by their counts before anything else happens (refimpl.modules.mc_filters).
    """

    def __init__(
        self,
        metadata_info: List[MCHEvictionPolicyMetadataInfo],
        threshold_filtering_func: Optional[ThresholdFilter] = None,
    ) -> None:
        if threshold_filtering_func is not None and not callable(threshold_filtering_func):
            raise TypeError(
                f"{type(self).__name__}: threshold_filtering_func expected a callable or None, "
                f"got {type(threshold_filtering_func).__name__}"
            )
        self._metadata_info = list(metadata_info)
        self._threshold_filtering_func = threshold_filtering_func

    @property
    @abstractmethod
    def metadata_info(self) -> List[MCHEvictionPolicyMetadataInfo]: ...

    @property
    def threshold_filtering_func(self) -> Optional[ThresholdFilter]:
        return self._threshold_filtering_func

    @abstractmethod
    def record_history_metadata(
        self, current_iter: int, incoming_ids: Array, history_metadata: Dict[str, Array]
    ) -> None:
        """Fill, in place, the history metadata entries of the ids recorded this iteration."""

    @abstractmethod
    def coalesce_history_metadata(
        self,
        current_iter: int,
        history_metadata: Dict[str, Array],
        unique_ids_counts: Array,
        unique_inverse_mapping: Array,
        additional_ids: Optional[Array] = None,
        threshold_mask: Optional[Array] = None,
    ) -> Dict[str, Array]:
        """Per-unique-id metadata of the window (unique-id order, filtered by threshold_mask)."""

    @abstractmethod
    def update_metadata_and_generate_eviction_scores(
        self,
        current_iter: int,
        mch_size: int,
        coalesced_history_argsort_mapping: Array,
        coalesced_history_sorted_unique_ids_counts: Array,
        coalesced_history_mch_matching_elements_mask: Array,
        coalesced_history_mch_matching_indices: Array,
        mch_metadata: Dict[str, Array],
        coalesced_history_metadata: Dict[str, Array],
    ) -> Tuple[Array, Array]:
        """Update the table metadata in place and return (evicted slots, selected candidates)."""

    def _compute_selected_eviction_and_replacement_indices(
        self, pivot: int, eviction_scores: Array
    ) -> Tuple[Array, Array]:
        return select_evictions(pivot, eviction_scores)


def _last_access_coalesce(
    current_iter: int,
    history_metadata: Dict[str, Array],
    unique_ids_counts: Array,
    unique_inverse_mapping: Array,
    additional_ids: Optional[Array],
    threshold_mask: Optional[Array],
) -> Dict[str, Array]:
    """{"last_access_iter": la}, la_j = max{hl_i : inv_i = j} (additional ids count as seen now), then la[mask]."""
    hl = history_metadata["last_access_iter"].astype(np.int64)
    if additional_ids is not None:
        hl = np.concatenate([hl, np.full(np.shape(additional_ids)[0], current_iter, dtype=np.int64)])
    la = last_access_per_id(hl, unique_inverse_mapping, unique_ids_counts.shape[0])
    if threshold_mask is not None:
        la = la[threshold_mask]
    return {"last_access_iter": la}


def _record_current_iter(current_iter: int, history_metadata: Dict[str, Array]) -> None:
    history_metadata["last_access_iter"][:] = current_iter


def _frequency_ordered(coalesced: Dict[str, Array], argsort_mapping: Array) -> Array:
    """The coalesced last-access array put in frequency order, in place (as TorchRec's copy_)."""
    la = coalesced["last_access_iter"]
    la[:] = la[argsort_mapping]
    return la


class LFU_EvictionPolicy(MCHEvictionPolicy):
    """Keep the Z - 1 most frequent ids: score = accumulated count (lfu_scores)."""

    def __init__(self, threshold_filtering_func: Optional[ThresholdFilter] = None) -> None:
        super().__init__([MCHEvictionPolicyMetadataInfo("counts", True, False)], threshold_filtering_func)

    @property
    def metadata_info(self) -> List[MCHEvictionPolicyMetadataInfo]:
        return self._metadata_info

    def record_history_metadata(self, current_iter, incoming_ids, history_metadata) -> None:
        """LFU records nothing beyond the ids themselves."""

    def coalesce_history_metadata(
        self, current_iter, history_metadata, unique_ids_counts, unique_inverse_mapping,
        additional_ids=None, threshold_mask=None,
    ) -> Dict[str, Array]:
        return {}

    def update_metadata_and_generate_eviction_scores(
        self, current_iter, mch_size, coalesced_history_argsort_mapping,
        coalesced_history_sorted_unique_ids_counts, coalesced_history_mch_matching_elements_mask,
        coalesced_history_mch_matching_indices, mch_metadata, coalesced_history_metadata,
    ) -> Tuple[Array, Array]:
        """counts[pos] += fc (matched); n_c = fc (unmatched); counts[Z - 1] = MAX; score; counts[ev] = n_c[sel]."""
        counts = mch_metadata["counts"]
        fc, matched = coalesced_history_sorted_unique_ids_counts, coalesced_history_mch_matching_elements_mask
        counts[coalesced_history_mch_matching_indices] += fc[matched]
        n_c = fc[~matched]
        counts[mch_size - 1] = MAX
        ev, sel = self._compute_selected_eviction_and_replacement_indices(mch_size, lfu_scores(counts, n_c))
        counts[ev] = n_c[sel]
        return ev, sel


class LRU_EvictionPolicy(MCHEvictionPolicy):
    """Keep the Z - 1 most recently seen ids: score = -(distance in iterations + 1)^decay (lru_scores)."""

    def __init__(self, decay_exponent: float = 1.0, threshold_filtering_func: Optional[ThresholdFilter] = None) -> None:
        super().__init__([MCHEvictionPolicyMetadataInfo("last_access_iter", True, True)], threshold_filtering_func)
        self._decay_exponent = decay_exponent

    @property
    def metadata_info(self) -> List[MCHEvictionPolicyMetadataInfo]:
        return self._metadata_info

    @property
    def decay_exponent(self) -> Any:
        return self._decay_exponent

    def record_history_metadata(self, current_iter, incoming_ids, history_metadata) -> None:
        """hist_last[entries of this iteration] = current_iter."""
        _record_current_iter(current_iter, history_metadata)

    def coalesce_history_metadata(
        self, current_iter, history_metadata, unique_ids_counts, unique_inverse_mapping,
        additional_ids=None, threshold_mask=None,
    ) -> Dict[str, Array]:
        return _last_access_coalesce(
            current_iter, history_metadata, unique_ids_counts, unique_inverse_mapping, additional_ids, threshold_mask
        )

    def update_metadata_and_generate_eviction_scores(
        self, current_iter, mch_size, coalesced_history_argsort_mapping,
        coalesced_history_sorted_unique_ids_counts, coalesced_history_mch_matching_elements_mask,
        coalesced_history_mch_matching_indices, mch_metadata, coalesced_history_metadata,
    ) -> Tuple[Array, Array]:
        """last[pos] = fla (matched); n_la = fla (unmatched); last[Z - 1] = cur; score; last[ev] = n_la[sel]."""
        last = mch_metadata["last_access_iter"]
        matched = coalesced_history_mch_matching_elements_mask
        fla = _frequency_ordered(coalesced_history_metadata, coalesced_history_argsort_mapping)
        last[coalesced_history_mch_matching_indices] = fla[matched]
        n_la = fla[~matched]
        last[mch_size - 1] = current_iter
        scores = lru_scores(current_iter, last, n_la, self._decay_exponent)
        ev, sel = self._compute_selected_eviction_and_replacement_indices(mch_size, scores)
        last[ev] = n_la[sel]
        return ev, sel


class DistanceLFU_EvictionPolicy(MCHEvictionPolicy):
    """Keep the ids with the most uses per unit of staleness: score = count / (distance + 1)^decay
    (distance_lfu_scores)."""

    def __init__(self, decay_exponent: float = 1.0, threshold_filtering_func: Optional[ThresholdFilter] = None) -> None:
        super().__init__(
            [
                MCHEvictionPolicyMetadataInfo("counts", True, False),
                MCHEvictionPolicyMetadataInfo("last_access_iter", True, True),
            ],
            threshold_filtering_func,
        )
        self._decay_exponent = decay_exponent

    @property
    def metadata_info(self) -> List[MCHEvictionPolicyMetadataInfo]:
        return self._metadata_info

    @property
    def decay_exponent(self) -> Any:
        return self._decay_exponent

    def record_history_metadata(self, current_iter, incoming_ids, history_metadata) -> None:
        """hist_last[entries of this iteration] = current_iter."""
        _record_current_iter(current_iter, history_metadata)

    def coalesce_history_metadata(
        self, current_iter, history_metadata, unique_ids_counts, unique_inverse_mapping,
        additional_ids=None, threshold_mask=None,
    ) -> Dict[str, Array]:
        return _last_access_coalesce(
            current_iter, history_metadata, unique_ids_counts, unique_inverse_mapping, additional_ids, threshold_mask
        )

    def update_metadata_and_generate_eviction_scores(
        self, current_iter, mch_size, coalesced_history_argsort_mapping,
        coalesced_history_sorted_unique_ids_counts, coalesced_history_mch_matching_elements_mask,
        coalesced_history_mch_matching_indices, mch_metadata, coalesced_history_metadata,
    ) -> Tuple[Array, Array]:
        """LFU's and LRU's updates together, scored by distance_lfu_scores."""
        counts, last = mch_metadata["counts"], mch_metadata["last_access_iter"]
        fc, matched = coalesced_history_sorted_unique_ids_counts, coalesced_history_mch_matching_elements_mask
        fla = _frequency_ordered(coalesced_history_metadata, coalesced_history_argsort_mapping)
        pos = coalesced_history_mch_matching_indices
        counts[pos] += fc[matched]
        last[pos] = fla[matched]
        n_c, n_la = fc[~matched], fla[~matched]
        counts[mch_size - 1] = MAX
        last[mch_size - 1] = current_iter
        scores = distance_lfu_scores(current_iter, counts, last, n_c, n_la, self._decay_exponent)
        ev, sel = self._compute_selected_eviction_and_replacement_indices(mch_size, scores)
        counts[ev] = n_c[sel]
        last[ev] = n_la[sel]
        return ev, sel
