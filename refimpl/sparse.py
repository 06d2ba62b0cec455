"""JaggedTensor, KeyedJaggedTensor and KeyedTensor over NumPy arrays.

Mirrors `torchrec.sparse.jagged_tensor`: row b of a jagged tensor is
values[offsets[b] : offsets[b + 1]] with offsets = [0, cumsum(lengths)]; a keyed jagged tensor
stores F keys key-major (bag f * B + b is sample b of key f); a keyed tensor cuts one dense
dimension into one segment per key. Every constructor validates its input (`refimpl.validate`);
parts derived from an already validated object are not checked again.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from refimpl.base import as_numpy
from refimpl.validate import (
    check_dense_lengths_contents,
    check_dense_lengths_layout,
    missing_key,
    reject_variable_batch,
    validate_jagged,
    validate_keyed_jagged,
    validate_keyed_tensor,
    validate_keys,
)

__all__ = ["JaggedTensor", "KeyedJaggedTensor", "KeyedTensor", "regroup", "complete_cumsum"]


def _index_array(value: Any) -> Optional[np.ndarray]:
    if value is None:
        return None
    array = as_numpy(value)
    # An empty lengths/offsets holds no value, so TorchRec accepts any dtype; give it an integer one.
    if array.size == 0 and array.dtype.kind not in "iu":
        array = array.astype(np.int64)
    return array


def offsets_dtype(lengths_dtype: Any) -> np.dtype:
    """int32 and int64 lengths keep their dtype; narrower ones widen to int64 so sums cannot wrap."""
    dtype = np.dtype(lengths_dtype)
    return dtype if dtype in (np.dtype(np.int32), np.dtype(np.int64)) else np.dtype(np.int64)


def complete_cumsum(lengths: np.ndarray) -> np.ndarray:
    """offsets = [0, l_0, l_0 + l_1, ..., sum_b l_b]
    Shapes: lengths (B,) -> offsets (B + 1,)."""
    offsets = np.zeros(lengths.shape[0] + 1, dtype=offsets_dtype(lengths.dtype))
    np.cumsum(lengths, dtype=offsets.dtype, out=offsets[1:])
    return offsets


def _rows(array: np.ndarray, offsets: np.ndarray) -> List[np.ndarray]:
    return [array[offsets[b] : offsets[b + 1]] for b in range(offsets.shape[0] - 1)]


def _padded(rows: List[np.ndarray], n: int, padding_value: float, dtype: Any, tail: tuple) -> np.ndarray:
    """out[b, :min(len_b, N)] = row_b[:N]; the rest is padding_value.  Shapes -> (B, N, *tail)."""
    out = np.full((len(rows), n) + tail, padding_value, dtype=dtype)
    for b, row in enumerate(rows):
        kept = row[:n]
        out[b, : kept.shape[0]] = kept
    return out


def _desired_length(desired_length: Optional[int], lengths: np.ndarray) -> int:
    if desired_length is None:
        return int(lengths.max()) if lengths.size else 0
    n = operator.index(desired_length)
    if n < 0:
        raise ValueError(f"to_padded_dense: desired_length must be >= 0; got {n}")
    return n


class JaggedTensor:
    """row_b = values[offsets[b] : offsets[b + 1]],  offsets = [0, cumsum(lengths)]; weights alike.

    Shapes: values (n,) or (n, D); lengths (B,); offsets (B + 1,); weights (n,).
    Source: TorchRec `JaggedTensor`; recspec also checks that lengths/offsets fit the values.
    """

    def __init__(
        self,
        values: Any,
        weights: Any = None,
        lengths: Any = None,
        offsets: Any = None,
    ) -> None:
        values = as_numpy(values)
        weights = None if weights is None else as_numpy(weights)
        lengths, offsets = _index_array(lengths), _index_array(offsets)
        validate_jagged(values, lengths, offsets, weights, "JaggedTensor")
        self._init(values, weights, lengths, offsets)

    def _init(self, values, weights, lengths, offsets) -> None:
        self._values = values
        self._weights = weights
        self._lengths = lengths
        self._offsets = offsets

    @classmethod
    def _trusted(cls, values, weights, lengths, offsets) -> "JaggedTensor":
        """Parts cut from an already validated object: no second pass."""
        jt = cls.__new__(cls)
        jt._init(values, weights, lengths, offsets)
        return jt

    # --- accessors ------------------------------------------------------------------------
    def values(self) -> np.ndarray:
        return self._values

    def weights(self) -> np.ndarray:
        if self._weights is None:
            raise ValueError("JaggedTensor.weights(): expected a weighted JaggedTensor, got one without weights")
        return self._weights

    def weights_or_none(self) -> Optional[np.ndarray]:
        return self._weights

    def lengths(self) -> np.ndarray:
        """lengths[b] = offsets[b + 1] - offsets[b] (cached)."""
        if self._lengths is None:
            self._lengths = np.diff(self._offsets)
        return self._lengths

    def offsets(self) -> np.ndarray:
        """offsets = [0, cumsum(lengths)] (cached)."""
        if self._offsets is None:
            self._offsets = complete_cumsum(self._lengths)
        return self._offsets

    def lengths_or_none(self) -> Optional[np.ndarray]:
        return self._lengths

    def offsets_or_none(self) -> Optional[np.ndarray]:
        return self._offsets

    # --- dense views ----------------------------------------------------------------------
    def to_dense(self) -> List[np.ndarray]:
        """[values[offsets[b] : offsets[b + 1]] for b < B]"""
        return _rows(self._values, self.offsets())

    def to_dense_weights(self) -> Optional[List[np.ndarray]]:
        """[weights[offsets[b] : offsets[b + 1]] for b < B], None when unweighted."""
        return None if self._weights is None else _rows(self._weights, self.offsets())

    def to_padded_dense(self, desired_length: Optional[int] = None, padding_value: float = 0.0) -> np.ndarray:
        """out[b, j] = row_b[j] for j < min(len_b, N), else padding_value; N = desired_length or max len_b.
        Shapes: -> (B, N) for 1-D values, (B, N, D) for 2-D values."""
        n = _desired_length(desired_length, self.lengths())
        return _padded(self.to_dense(), n, padding_value, self._values.dtype, self._values.shape[1:])

    def to_padded_dense_weights(
        self, desired_length: Optional[int] = None, padding_value: float = 0.0
    ) -> Optional[np.ndarray]:
        """to_padded_dense applied to the weights; None when unweighted.  Shapes: -> (B, N)."""
        if self._weights is None:
            return None
        n = _desired_length(desired_length, self.lengths())
        return _padded(self.to_dense_weights(), n, padding_value, self._weights.dtype, ())

    # --- constructors ---------------------------------------------------------------------
    @staticmethod
    def empty(
        is_weighted: bool = False,
        device: Any = None,
        values_dtype: Any = None,
        weights_dtype: Any = None,
        lengths_dtype: Any = np.int32,
    ) -> "JaggedTensor":
        """B = 0: no rows, offsets [0]. `device` is accepted and ignored."""
        return JaggedTensor._trusted(
            np.empty(0, dtype=np.float64 if values_dtype is None else values_dtype),
            np.empty(0, dtype=np.float64 if weights_dtype is None else weights_dtype) if is_weighted else None,
            np.empty(0, dtype=lengths_dtype),
            None,
        )

    @staticmethod
    def from_dense(values: Sequence[Any], weights: Optional[Sequence[Any]] = None) -> "JaggedTensor":
        """values = concat_b row_b,  lengths[b] = len(row_b) (int32)."""
        rows = [as_numpy(v) for v in values]
        for b, row in enumerate(rows):
            if row.ndim not in (1, 2):
                raise ValueError(f"JaggedTensor.from_dense: values[{b}] must be 1-D or 2-D; got shape {row.shape}")
        lengths = np.array([row.shape[0] for row in rows], dtype=np.int32)
        flat_weights = None
        if weights is not None:
            wrows = [as_numpy(w) for w in weights]
            if len(wrows) != len(rows):
                raise ValueError(
                    f"JaggedTensor.from_dense: weights must have one row per values row ({len(rows)}); got {len(wrows)}"
                )
            for b, (row, wrow) in enumerate(zip(rows, wrows)):
                if wrow.shape != (row.shape[0],):
                    raise ValueError(
                        f"JaggedTensor.from_dense: weights[{b}] must have shape ({row.shape[0]},); got {wrow.shape}"
                    )
            flat_weights = np.concatenate(wrows) if wrows else np.empty(0)
        flat = np.concatenate(rows, axis=0) if rows else np.empty(0)
        return JaggedTensor(values=flat, weights=flat_weights, lengths=lengths)

    @staticmethod
    def from_dense_lengths(values: Any, lengths: Any, weights: Any = None) -> "JaggedTensor":
        """row_b = values[b, :lengths[b]]  Shapes: values (B, N) or (B, N, D); lengths (B,)."""
        values, lengths = as_numpy(values), _index_array(lengths)
        weights = None if weights is None else as_numpy(weights)
        check_dense_lengths_layout(values, lengths, weights)
        N = values.shape[1]
        check_dense_lengths_contents(N, lengths)
        keep = np.arange(N)[None, :] < lengths[:, None]
        return JaggedTensor(
            values=values[keep],
            weights=None if weights is None else weights[keep],
            lengths=lengths,
        )

    def __repr__(self) -> str:
        parts = [f"values={self.to_dense()!r}"]
        if self._weights is not None:
            parts.append(f"weights={self.to_dense_weights()!r}")
        return f"JaggedTensor({', '.join(parts)})"


class KeyedJaggedTensor:
    """Key-major jagged batch: bag f * B + b is sample b of key f,
    row_{f,b} = values[offsets[f * B + b] : offsets[f * B + b + 1]].

    Shapes: values (n,) or (n, D); lengths (F * B,); offsets (F * B + 1,), global over values;
    weights (n,). Source: TorchRec `KeyedJaggedTensor` (fixed batch size B for every key).
    """

    def __init__(
        self,
        keys: Sequence[str],
        values: Any,
        weights: Any = None,
        lengths: Any = None,
        offsets: Any = None,
        stride: Optional[int] = None,
        stride_per_key_per_rank: Any = None,
        inverse_indices: Any = None,
    ) -> None:
        reject_variable_batch(stride_per_key_per_rank, inverse_indices, "KeyedJaggedTensor")
        keys = validate_keys(keys, "KeyedJaggedTensor")
        values = as_numpy(values)
        weights = None if weights is None else as_numpy(weights)
        lengths, offsets = _index_array(lengths), _index_array(offsets)
        B = validate_keyed_jagged(keys, values, lengths, offsets, weights, stride)
        self._init(keys, values, weights, lengths, offsets, B)

    def _init(self, keys, values, weights, lengths, offsets, stride) -> None:
        self._keys = keys
        self._values = values
        self._weights = weights
        self._lengths = lengths
        self._offsets = offsets
        self._stride = stride
        self._length_per_key: Optional[List[int]] = None
        self._offset_per_key: Optional[List[int]] = None
        self._jt_dict: Optional[Dict[str, JaggedTensor]] = None

    @classmethod
    def _trusted(cls, keys, values, weights, lengths, offsets, stride) -> "KeyedJaggedTensor":
        """Parts cut from an already validated object (keys may repeat after `permute`)."""
        kjt = cls.__new__(cls)
        kjt._init(keys, values, weights, lengths, offsets, stride)
        return kjt

    # --- accessors ------------------------------------------------------------------------
    def keys(self) -> List[str]:
        return list(self._keys)

    def values(self) -> np.ndarray:
        return self._values

    def weights(self) -> np.ndarray:
        if self._weights is None:
            raise ValueError(
                "KeyedJaggedTensor.weights(): expected a weighted KeyedJaggedTensor, got one without weights"
            )
        return self._weights

    def weights_or_none(self) -> Optional[np.ndarray]:
        return self._weights

    def lengths(self) -> np.ndarray:
        """lengths[f * B + b] = offsets[f * B + b + 1] - offsets[f * B + b] (cached)."""
        if self._lengths is None:
            self._lengths = np.diff(self._offsets)
        return self._lengths

    def offsets(self) -> np.ndarray:
        """offsets = [0, cumsum(lengths)], global over all keys (cached)."""
        if self._offsets is None:
            self._offsets = complete_cumsum(self._lengths)
        return self._offsets

    def lengths_or_none(self) -> Optional[np.ndarray]:
        return self._lengths

    def offsets_or_none(self) -> Optional[np.ndarray]:
        return self._offsets

    def stride(self) -> int:
        """B, the batch size shared by every key."""
        return self._stride

    def stride_per_key(self) -> List[int]:
        return [self._stride] * len(self._keys)

    def variable_stride_per_key(self) -> bool:
        return False

    def inverse_indices_or_none(self) -> None:
        return None

    def length_per_key(self) -> List[int]:
        """L_f = sum_b lengths[f * B + b] (cached Python ints)."""
        if self._length_per_key is None:
            per_key = self.lengths().reshape(len(self._keys), self._stride).sum(axis=1, dtype=np.int64)
            self._length_per_key = [int(n) for n in per_key]
        return list(self._length_per_key)

    def offset_per_key(self) -> List[int]:
        """[0, L_0, L_0 + L_1, ..., n]: where each key's values start (cached Python ints)."""
        if self._offset_per_key is None:
            self._offset_per_key = [0] + np.cumsum(self.length_per_key(), dtype=np.int64).tolist()
        return list(self._offset_per_key)

    def lengths_offset_per_key(self) -> List[int]:
        """[0, B, 2B, ..., F * B]: where each key's lengths start."""
        return [f * self._stride for f in range(len(self._keys) + 1)]

    def index_per_key(self) -> Dict[str, int]:
        """key -> position in keys (the last one for a repeated key, as in TorchRec)."""
        return {key: f for f, key in enumerate(self._keys)}

    def sync(self) -> "KeyedJaggedTensor":
        """Compute length_per_key/offset_per_key now."""
        self.offset_per_key()
        return self

    # --- per-key views --------------------------------------------------------------------
    def _key_slices(self, f: int):
        opk, B = self.offset_per_key(), self._stride
        values = self._values[opk[f] : opk[f + 1]]
        weights = None if self._weights is None else self._weights[opk[f] : opk[f + 1]]
        return values, weights, self.lengths()[f * B : (f + 1) * B]

    def to_dict(self) -> Dict[str, JaggedTensor]:
        """key_f -> JaggedTensor(values[o_f : o_{f+1}], lengths[f * B : (f + 1) * B], per-key offsets from 0)."""
        if self._jt_dict is None:
            jt_dict: Dict[str, JaggedTensor] = {}
            for f, key in enumerate(self._keys):
                values, weights, lengths = self._key_slices(f)
                jt_dict[key] = JaggedTensor._trusted(values, weights, lengths, complete_cumsum(lengths))
            self._jt_dict = jt_dict
        # A copy: callers (feature processors) mutate the dict they get.
        return dict(self._jt_dict)

    def __getitem__(self, key: str) -> JaggedTensor:
        index = self.index_per_key()
        if key not in index:
            raise missing_key(key, self._keys, "KeyedJaggedTensor")
        values, weights, lengths = self._key_slices(index[key])
        return JaggedTensor._trusted(values, weights, lengths, None)

    def split(self, segments: Sequence[int]) -> List["KeyedJaggedTensor"]:
        """Consecutive key groups: group i holds keys[s_i : s_i + segments[i]], s_i = sum(segments[:i])."""
        segments = [operator.index(s) for s in segments]
        if any(s < 0 for s in segments) or sum(segments) != len(self._keys):
            raise ValueError(
                f"KeyedJaggedTensor.split: segments must be >= 0 and sum to the number of keys "
                f"{len(self._keys)}; got {segments}"
            )
        opk, B, lengths = self.offset_per_key(), self._stride, self.lengths()
        out, start = [], 0
        for size in segments:
            end = start + size
            out.append(
                KeyedJaggedTensor._trusted(
                    self._keys[start:end],
                    self._values[opk[start] : opk[end]],
                    None if self._weights is None else self._weights[opk[start] : opk[end]],
                    lengths[start * B : end * B],
                    None,
                    B,
                )
            )
            start = end
        return out

    def permute(self, indices: Sequence[int], indices_tensor: Any = None) -> "KeyedJaggedTensor":
        """keys'_j = keys[indices[j]], with that key's values, lengths and weights (repeats/drops allowed)."""
        F = len(self._keys)
        indices = [operator.index(i) for i in indices]
        for j, i in enumerate(indices):
            if not 0 <= i < F:
                raise IndexError(f"KeyedJaggedTensor.permute: indices[{j}] must be in [0, {F}); got {i}")
        opk, B, lengths = self.offset_per_key(), self._stride, self.lengths()

        def gather(array: np.ndarray, bounds) -> np.ndarray:
            blocks = [array[bounds(i) : bounds(i + 1)] for i in indices]
            return np.concatenate(blocks, axis=0) if blocks else array[:0]

        return KeyedJaggedTensor._trusted(
            [self._keys[i] for i in indices],
            gather(self._values, lambda f: opk[f]),
            None if self._weights is None else gather(self._weights, lambda f: opk[f]),
            gather(lengths, lambda f: f * B),
            None,
            B,
        )

    # --- constructors ---------------------------------------------------------------------
    @staticmethod
    def from_lengths_sync(
        keys: Sequence[str],
        values: Any,
        lengths: Any,
        weights: Any = None,
        stride: Optional[int] = None,
        stride_per_key_per_rank: Any = None,
        inverse_indices: Any = None,
    ) -> "KeyedJaggedTensor":
        return KeyedJaggedTensor(
            keys, values, weights=weights, lengths=lengths, stride=stride,
            stride_per_key_per_rank=stride_per_key_per_rank, inverse_indices=inverse_indices,
        ).sync()

    @staticmethod
    def from_offsets_sync(
        keys: Sequence[str],
        values: Any,
        offsets: Any,
        weights: Any = None,
        stride: Optional[int] = None,
        stride_per_key_per_rank: Any = None,
        inverse_indices: Any = None,
    ) -> "KeyedJaggedTensor":
        return KeyedJaggedTensor(
            keys, values, weights=weights, offsets=offsets, stride=stride,
            stride_per_key_per_rank=stride_per_key_per_rank, inverse_indices=inverse_indices,
        ).sync()

    @staticmethod
    def from_jt_dict(jt_dict: Dict[str, JaggedTensor]) -> "KeyedJaggedTensor":
        """keys in dict order; values/lengths/weights = the JaggedTensors' concatenated key by key."""
        keys = validate_keys(list(jt_dict), "KeyedJaggedTensor.from_jt_dict")
        if not keys:
            return KeyedJaggedTensor.empty()
        jts = list(jt_dict.values())
        strides = {key: int(jt.lengths().shape[0]) for key, jt in zip(keys, jts)}
        if len(set(strides.values())) > 1:
            raise NotImplementedError(
                "KeyedJaggedTensor.from_jt_dict: variable batch size per key is not supported; "
                f"expected one batch size for every key, got {strides}"
            )
        weighted = [jt.weights_or_none() is not None for jt in jts]
        if any(weighted) and not all(weighted):
            unweighted = [key for key, w in zip(keys, weighted) if not w]
            raise ValueError(
                f"KeyedJaggedTensor.from_jt_dict: weights must be given for every key or none; "
                f"got no weights for {unweighted}"
            )
        return KeyedJaggedTensor(
            keys,
            np.concatenate([jt.values() for jt in jts], axis=0),
            weights=np.concatenate([jt.weights() for jt in jts]) if all(weighted) else None,
            lengths=np.concatenate([jt.lengths() for jt in jts]),
            stride=strides[keys[0]],
        )

    @staticmethod
    def concat(kjt_list: Sequence["KeyedJaggedTensor"]) -> "KeyedJaggedTensor":
        """keys = keys_1 ++ keys_2 ++ ...; values, lengths and weights concatenated in that order
        (key-major blocks stay key-major when every part has the same batch size B)."""
        name = "KeyedJaggedTensor.concat"
        if not kjt_list:
            raise ValueError(f"{name}: kjt_list expected at least one KeyedJaggedTensor, got none")
        strides = sorted({kjt.stride() for kjt in kjt_list if kjt.keys()})
        if len(strides) > 1:
            raise ValueError(f"{name}: kjt_list expected one batch size for every part, got {strides}")
        weighted = [kjt.weights_or_none() is not None for kjt in kjt_list]
        if any(weighted) and not all(weighted):
            raise ValueError(
                f"{name}: kjt_list expected weights on every part or none, got weighted = {weighted}"
            )
        return KeyedJaggedTensor(
            [key for kjt in kjt_list for key in kjt.keys()],
            np.concatenate([kjt.values() for kjt in kjt_list], axis=0),
            weights=np.concatenate([kjt.weights() for kjt in kjt_list]) if all(weighted) else None,
            lengths=np.concatenate([kjt.lengths() for kjt in kjt_list]),
            stride=strides[0] if strides else kjt_list[0].stride(),
        )

    @staticmethod
    def empty(
        is_weighted: bool = False,
        device: Any = None,
        values_dtype: Any = None,
        weights_dtype: Any = None,
        lengths_dtype: Any = np.int32,
    ) -> "KeyedJaggedTensor":
        """No keys, stride 0, to_dict() == {}. `device` is accepted and ignored."""
        return KeyedJaggedTensor._trusted(
            [],
            np.empty(0, dtype=np.float64 if values_dtype is None else values_dtype),
            np.empty(0, dtype=np.float64 if weights_dtype is None else weights_dtype) if is_weighted else None,
            np.empty(0, dtype=lengths_dtype),
            None,
            0,
        )

    def __repr__(self) -> str:
        if not self._keys:
            return "KeyedJaggedTensor()"
        rows = []
        for f, key in enumerate(self._keys):
            values, weights, lengths = self._key_slices(f)
            jt = JaggedTensor._trusted(values, weights, lengths, None)
            rows.append(f"  {key!r}: {jt!r}")
        return "KeyedJaggedTensor({\n" + ",\n".join(rows) + "\n})"


class KeyedTensor:
    """values cut along key_dim into consecutive segments: kt[k_i] = values[..., o_i : o_i + L_i, ...],
    o = [0, cumsum(length_per_key)].

    Shapes: values (B, sum_i L_i) for key_dim = 1 (an EmbeddingBagCollection's output).
    """

    def __init__(
        self,
        keys: Sequence[str],
        length_per_key: Sequence[int],
        values: Any,
        key_dim: int = 1,
        offset_per_key: Optional[Sequence[int]] = None,
        index_per_key: Optional[Dict[str, int]] = None,
    ) -> None:
        values = as_numpy(values)
        name = "KeyedTensor"
        try:
            length_per_key = [operator.index(n) for n in length_per_key]
            key_dim = operator.index(key_dim)
        except TypeError:
            raise TypeError(
                f"{name}: length_per_key and key_dim must be ints; got {length_per_key!r} and {key_dim!r}"
            ) from None
        validate_keyed_tensor(keys, length_per_key, values, key_dim, offset_per_key, name)
        if index_per_key is not None and dict(index_per_key) != {k: i for i, k in enumerate(keys)}:
            raise ValueError(
                f"{name}: index_per_key must map each key to its position; got {dict(index_per_key)} for keys {list(keys)}"
            )
        self._keys = list(keys)
        self._length_per_key = length_per_key
        self._values = values
        self._key_dim = key_dim
        self._offset_per_key = [0] + np.cumsum(length_per_key, dtype=np.int64).tolist()

    def keys(self) -> List[str]:
        return list(self._keys)

    def values(self) -> np.ndarray:
        return self._values

    def key_dim(self) -> int:
        return self._key_dim

    def length_per_key(self) -> List[int]:
        return list(self._length_per_key)

    def offset_per_key(self) -> List[int]:
        """[0, L_0, L_0 + L_1, ...] (Python ints)."""
        return list(self._offset_per_key)

    def index_per_key(self) -> Dict[str, int]:
        return {key: i for i, key in enumerate(self._keys)}

    def _segment(self, i: int) -> np.ndarray:
        index = [slice(None)] * self._values.ndim
        index[self._key_dim] = slice(self._offset_per_key[i], self._offset_per_key[i + 1])
        return self._values[tuple(index)]

    def __getitem__(self, key: str) -> np.ndarray:
        """values narrowed to key's segment along key_dim (a view)."""
        index = self.index_per_key()
        if key not in index:
            raise missing_key(key, self._keys, "KeyedTensor")
        return self._segment(index[key])

    def to_dict(self) -> Dict[str, np.ndarray]:
        """key -> its segment along key_dim, in keys order."""
        return {key: self._segment(i) for i, key in enumerate(self._keys)}

    @staticmethod
    def from_tensor_list(
        keys: Sequence[str], tensors: Sequence[Any], key_dim: int = 1, cat_dim: int = 1
    ) -> "KeyedTensor":
        """values = concat(tensors, cat_dim),  L_i = tensors[i].shape[key_dim]."""
        arrays = [as_numpy(t) for t in tensors]
        if len(arrays) != len(keys):
            raise ValueError(
                f"KeyedTensor.from_tensor_list: tensors must have one entry per key ({len(keys)}); got {len(arrays)}"
            )
        if not arrays:
            raise ValueError("KeyedTensor.from_tensor_list: tensors must hold at least one tensor; got none")
        return KeyedTensor(
            keys=keys,
            length_per_key=[a.shape[key_dim] for a in arrays],
            values=np.concatenate(arrays, axis=cat_dim),
            key_dim=key_dim,
        )

    @staticmethod
    def regroup(keyed_tensors: Sequence["KeyedTensor"], groups: Sequence[Sequence[str]]) -> List[np.ndarray]:
        return regroup(keyed_tensors, groups)

    @staticmethod
    def regroup_as_dict(
        keyed_tensors: Sequence["KeyedTensor"], groups: Sequence[Sequence[str]], keys: Sequence[str]
    ) -> Dict[str, np.ndarray]:
        """{keys[g]: regroup(keyed_tensors, groups)[g]}"""
        if len(keys) != len(groups):
            raise ValueError(
                f"KeyedTensor.regroup_as_dict: keys must name each group ({len(groups)}); got {len(keys)}"
            )
        return dict(zip(keys, regroup(keyed_tensors, groups)))

    def __repr__(self) -> str:
        return f"KeyedTensor(keys={self._keys}, length_per_key={self._length_per_key}, key_dim={self._key_dim})"


def regroup(keyed_tensors: Sequence[KeyedTensor], groups: Sequence[Sequence[str]]) -> List[np.ndarray]:
    """out_g = concat_{k in group g} kt(k)[k] along the key dimension (1 for pooled embeddings),
    kt(k) the keyed tensor holding key k (the last one when several do, as in TorchRec).

    Shapes: each keyed tensor (B, sum L) -> out_g (B, sum_{k in g} L_k).
    """
    key_dim = common_key_dim(keyed_tensors)
    holder: Dict[str, KeyedTensor] = {}
    for kt in keyed_tensors:
        for key in kt.keys():
            holder[key] = kt
    out = []
    for g, group in enumerate(groups):
        for key in group:
            if key not in holder:
                raise missing_key(key, list(holder), f"regroup: groups[{g}]")
        parts = [holder[key][key] for key in group]
        if parts:
            out.append(np.concatenate(parts, axis=key_dim))
        else:
            shape = list(keyed_tensors[0].values().shape)
            shape[key_dim] = 0
            out.append(np.empty(shape, dtype=keyed_tensors[0].values().dtype))
    return out


def common_key_dim(keyed_tensors: Sequence[Any]) -> int:
    """The one key dimension every keyed tensor shares, with equal sizes in all other dimensions."""
    if not keyed_tensors:
        raise ValueError("regroup: keyed_tensors must hold at least one KeyedTensor; got none")
    first = keyed_tensors[0]
    key_dim = first.key_dim() % first.values().ndim
    shape = list(first.values().shape)
    for i, kt in enumerate(keyed_tensors):
        other = list(kt.values().shape)
        if kt.key_dim() % kt.values().ndim != key_dim or len(other) != len(shape):
            raise ValueError(
                f"regroup: keyed_tensors[{i}] must have key_dim {key_dim} and {len(shape)} dimensions "
                f"like keyed_tensors[0]; got key_dim {kt.key_dim()} with shape {tuple(other)}"
            )
        other[key_dim] = shape[key_dim]
        if other != shape:
            raise ValueError(
                f"regroup: keyed_tensors[{i}] must match keyed_tensors[0] outside the key dimension "
                f"{key_dim} (shape {tuple(shape)}); got shape {tuple(kt.values().shape)}"
            )
    return key_dim
