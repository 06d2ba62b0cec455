"""JaggedTensor, KeyedJaggedTensor and KeyedTensor over torch tensors, in TorchRec's layout.

Row b of a jagged tensor is values[offsets[b] : offsets[b + 1]] with offsets = [0, cumsum(lengths)];
a keyed jagged tensor stores F keys key-major (bag f * B + b is sample b of key f); a keyed tensor
cuts one dense dimension into one segment per key. Every constructor validates its input with
one device round trip (`accel.validate`); parts cut from an already validated object are not
checked again. Slicing, permuting and regrouping are plain torch ops, so autograd flows through
values and weights.

Conversions: `from_refimpl`/`to_refimpl` share memory with the NumPy arrays on CPU;
`to_torchrec`/`from_torchrec` import TorchRec on first use.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from accel.validate import (
    missing_key,
    reject_variable_batch,
    validate_dense_lengths,
    validate_jagged,
    validate_keyed_jagged,
    validate_keyed_tensor,
    validate_keys,
)
from refimpl import sparse as ref
from refimpl.base import as_numpy

__all__ = [
    "JaggedTensor",
    "KeyedJaggedTensor",
    "KeyedTensor",
    "regroup",
    "complete_cumsum",
    "from_refimpl",
    "to_refimpl",
    "from_torchrec",
    "to_torchrec",
]

_TORCHREC_MISSING = (
    "{what} needs TorchRec, which is not installed; install it beside recspec with "
    "scripts/install-torchrec.sh"
)


# --- tensors from anything ---------------------------------------------------------------------


def _tensor(value: Any, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """A tensor as is; a NumPy array shared when torch can (contiguous, writable); else a copy."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if not value.flags.writeable:
            value = value.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    else:
        tensor = torch.as_tensor(value)
    return tensor if device is None else tensor.to(device)


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _index_tensor(value: Any, device: torch.device) -> Optional[torch.Tensor]:
    tensor = _tensor(value, device)
    # An empty lengths/offsets holds no value, so TorchRec accepts any dtype; give it an integer one.
    if tensor is not None and tensor.numel() == 0 and not _is_integer(tensor.dtype):
        tensor = tensor.to(torch.int64)
    return tensor


def offsets_dtype(lengths_dtype: torch.dtype) -> torch.dtype:
    """int32 and int64 lengths keep their dtype; narrower ones widen to int64 so sums cannot wrap."""
    return lengths_dtype if lengths_dtype in (torch.int32, torch.int64) else torch.int64


def complete_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    """offsets = [0, l_0, l_0 + l_1, ..., sum_b l_b]
    Shapes: lengths (B,) -> offsets (B + 1,)."""
    dtype = offsets_dtype(lengths.dtype)
    offsets = torch.zeros(lengths.shape[0] + 1, dtype=dtype, device=lengths.device)
    offsets[1:] = torch.cumsum(lengths, 0, dtype=dtype)
    return offsets


def _rows(tensor: torch.Tensor, offsets: torch.Tensor) -> List[torch.Tensor]:
    bounds = offsets.tolist()
    return [tensor[bounds[b] : bounds[b + 1]] for b in range(len(bounds) - 1)]


def _desired_length(desired_length: Optional[int], lengths: torch.Tensor) -> int:
    if desired_length is None:
        return int(lengths.max()) if lengths.numel() else 0
    n = operator.index(desired_length)
    if n < 0:
        raise ValueError(f"to_padded_dense: desired_length expected >= 0, got {n}")
    return n


def _padded(
    tensor: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor, n: int, padding_value: float
) -> torch.Tensor:
    """out[b, j] = tensor[offsets[b] + j] for j < min(lengths[b], N), else padding_value.
    Shapes: tensor (total, *tail) -> (B, N, *tail)."""
    batch, total, device = lengths.shape[0], tensor.shape[0], tensor.device
    tail = tuple(tensor.shape[1:])
    # One spare column N catches every element past N, so no data-dependent mask (and no device
    # sync) is needed; the spare column is cut off, which also gives those elements zero gradient.
    out = tensor.new_full((batch, n + 1) + tail, padding_value)
    if total:
        rows = torch.repeat_interleave(
            torch.arange(batch, device=device), lengths.long(), output_size=total
        )
        position = torch.arange(total, device=device) - offsets[:-1].long()[rows]
        out = out.index_put((rows, position.clamp(max=n)), tensor)
    return out[:, :n]


# --- JaggedTensor ------------------------------------------------------------------------------


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
        values = _tensor(values)
        device = values.device
        weights = _tensor(weights, device)
        lengths, offsets = _index_tensor(lengths, device), _index_tensor(offsets, device)
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
    def values(self) -> torch.Tensor:
        return self._values

    def weights(self) -> torch.Tensor:
        if self._weights is None:
            raise ValueError(
                "JaggedTensor.weights(): expected a weighted JaggedTensor, got one without weights"
            )
        return self._weights

    def weights_or_none(self) -> Optional[torch.Tensor]:
        return self._weights

    def lengths(self) -> torch.Tensor:
        """lengths[b] = offsets[b + 1] - offsets[b] (cached)."""
        if self._lengths is None:
            self._lengths = torch.diff(self._offsets)
        return self._lengths

    def offsets(self) -> torch.Tensor:
        """offsets = [0, cumsum(lengths)] (cached)."""
        if self._offsets is None:
            self._offsets = complete_cumsum(self._lengths)
        return self._offsets

    def lengths_or_none(self) -> Optional[torch.Tensor]:
        return self._lengths

    def offsets_or_none(self) -> Optional[torch.Tensor]:
        return self._offsets

    def device(self) -> torch.device:
        return self._values.device

    def to(self, device: Any, non_blocking: bool = False) -> "JaggedTensor":
        """A copy on `device` (the same object's parts when they are already there)."""

        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return JaggedTensor._trusted(
            move(self._values), move(self._weights), move(self._lengths), move(self._offsets)
        )

    # --- dense views ----------------------------------------------------------------------
    def to_dense(self) -> List[torch.Tensor]:
        """[values[offsets[b] : offsets[b + 1]] for b < B]"""
        return _rows(self._values, self.offsets())

    def to_dense_weights(self) -> Optional[List[torch.Tensor]]:
        """[weights[offsets[b] : offsets[b + 1]] for b < B], None when unweighted."""
        return None if self._weights is None else _rows(self._weights, self.offsets())

    def to_padded_dense(
        self, desired_length: Optional[int] = None, padding_value: float = 0.0
    ) -> torch.Tensor:
        """out[b, j] = row_b[j] for j < min(len_b, N), else padding_value; N = desired_length or max len_b.
        Shapes: -> (B, N) for 1-D values, (B, N, D) for 2-D values."""
        n = _desired_length(desired_length, self.lengths())
        return _padded(self._values, self.lengths(), self.offsets(), n, padding_value)

    def to_padded_dense_weights(
        self, desired_length: Optional[int] = None, padding_value: float = 0.0
    ) -> Optional[torch.Tensor]:
        """to_padded_dense applied to the weights; None when unweighted.  Shapes: -> (B, N)."""
        if self._weights is None:
            return None
        n = _desired_length(desired_length, self.lengths())
        return _padded(self._weights, self.lengths(), self.offsets(), n, padding_value)

    # --- constructors ---------------------------------------------------------------------
    @staticmethod
    def empty(
        is_weighted: bool = False,
        device: Any = None,
        values_dtype: Optional[torch.dtype] = None,
        weights_dtype: Optional[torch.dtype] = None,
        lengths_dtype: torch.dtype = torch.int32,
    ) -> "JaggedTensor":
        """B = 0: no rows, offsets [0]."""
        return JaggedTensor._trusted(
            torch.empty(0, dtype=values_dtype, device=device),
            torch.empty(0, dtype=weights_dtype, device=device) if is_weighted else None,
            torch.empty(0, dtype=lengths_dtype, device=device),
            None,
        )

    @staticmethod
    def from_dense(
        values: Sequence[torch.Tensor], weights: Optional[Sequence[torch.Tensor]] = None
    ) -> "JaggedTensor":
        """values = concat_b row_b,  lengths[b] = len(row_b) (int32)."""
        rows = [_tensor(v) for v in values]
        for b, row in enumerate(rows):
            if row.ndim not in (1, 2):
                raise ValueError(
                    f"JaggedTensor.from_dense: values[{b}] expected 1-D or 2-D, got shape {tuple(row.shape)}"
                )
        device = rows[0].device if rows else None
        lengths = torch.tensor([row.shape[0] for row in rows], dtype=torch.int32, device=device)
        flat_weights = None
        if weights is not None:
            weight_rows = [_tensor(w) for w in weights]
            if len(weight_rows) != len(rows):
                raise ValueError(
                    f"JaggedTensor.from_dense: weights expected one row per values row ({len(rows)}), "
                    f"got {len(weight_rows)}"
                )
            for b, (row, weight_row) in enumerate(zip(rows, weight_rows)):
                if tuple(weight_row.shape) != (row.shape[0],):
                    raise ValueError(
                        f"JaggedTensor.from_dense: weights[{b}] expected shape ({row.shape[0]},), "
                        f"got {tuple(weight_row.shape)}"
                    )
            flat_weights = torch.cat(weight_rows) if weight_rows else torch.empty(0)
        flat = torch.cat(rows, dim=0) if rows else torch.empty(0)
        return JaggedTensor(values=flat, weights=flat_weights, lengths=lengths)

    @staticmethod
    def from_dense_lengths(values: Any, lengths: Any, weights: Any = None) -> "JaggedTensor":
        """row_b = values[b, :lengths[b]]  Shapes: values (B, N) or (B, N, D); lengths (B,)."""
        values = _tensor(values)
        lengths = _index_tensor(lengths, values.device)
        weights = _tensor(weights, values.device)
        validate_dense_lengths(values, lengths, weights)
        keep = torch.arange(values.shape[1], device=values.device)[None, :] < lengths[:, None]
        # The kept rows number sum(lengths) by construction: no second validation.
        return JaggedTensor._trusted(
            values[keep], None if weights is None else weights[keep], lengths, None
        )

    def __repr__(self) -> str:
        parts = [f"values={self.to_dense()!r}"]
        if self._weights is not None:
            parts.append(f"weights={self.to_dense_weights()!r}")
        return f"JaggedTensor({', '.join(parts)})"


# --- KeyedJaggedTensor -------------------------------------------------------------------------


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
        self._checked_init(keys, values, weights, lengths, offsets, stride, False)

    def _checked_init(self, keys, values, weights, lengths, offsets, stride, allow_duplicate_keys):
        keys = validate_keys(keys, "KeyedJaggedTensor", allow_duplicate_keys)
        values = _tensor(values)
        device = values.device
        weights = _tensor(weights, device)
        lengths, offsets = _index_tensor(lengths, device), _index_tensor(offsets, device)
        batch = validate_keyed_jagged(
            keys, values, lengths, offsets, weights, stride,
            allow_duplicate_keys=allow_duplicate_keys,
        )
        self._init(keys, values, weights, lengths, offsets, batch)

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
        kjt._init(list(keys), values, weights, lengths, offsets, stride)
        return kjt

    @classmethod
    def from_any(cls, obj: Any) -> "KeyedJaggedTensor":
        """An accel KJT from any object with TorchRec's KJT accessors: keys(), values(), lengths(),
        offsets(), weights_or_none() (and stride() when present): a TorchRec or refimpl KJT.

        The parts are validated once; repeated keys are kept (TorchRec's `permute` makes them)."""
        if isinstance(obj, KeyedJaggedTensor):
            return obj
        if isinstance(obj, ref.KeyedJaggedTensor):
            return from_refimpl(obj)
        for accessor in ("keys", "values", "lengths", "offsets", "weights_or_none"):
            if not callable(getattr(obj, accessor, None)):
                raise TypeError(
                    "KeyedJaggedTensor.from_any: obj expected TorchRec's KeyedJaggedTensor accessors "
                    f"(keys, values, lengths, offsets, weights_or_none), got {type(obj).__name__} "
                    f"without {accessor}()"
                )
        variable = getattr(obj, "variable_stride_per_key", None)
        if callable(variable) and variable():
            raise NotImplementedError(
                "KeyedJaggedTensor.from_any: variable batch size per key is not supported; "
                "obj expected one batch size for every key, got variable_stride_per_key() == True"
            )
        values = _tensor(obj.values())
        offsets = _index_tensor(obj.offsets(), values.device)
        stride = obj.stride() if callable(getattr(obj, "stride", None)) else None
        kjt = cls.__new__(cls)
        kjt._checked_init(
            list(obj.keys()),
            values,
            obj.weights_or_none(),
            obj.lengths(),
            # TorchRec's empty() can hold offsets with no entry at all; lengths then say it all.
            offsets if offsets is not None and offsets.numel() else None,
            None if stride is None else int(stride),
            True,
        )
        return kjt

    # --- accessors ------------------------------------------------------------------------
    def keys(self) -> List[str]:
        return list(self._keys)

    def values(self) -> torch.Tensor:
        return self._values

    def weights(self) -> torch.Tensor:
        if self._weights is None:
            raise ValueError(
                "KeyedJaggedTensor.weights(): expected a weighted KeyedJaggedTensor, got one without weights"
            )
        return self._weights

    def weights_or_none(self) -> Optional[torch.Tensor]:
        return self._weights

    def lengths(self) -> torch.Tensor:
        """lengths[f * B + b] = offsets[f * B + b + 1] - offsets[f * B + b] (cached)."""
        if self._lengths is None:
            self._lengths = torch.diff(self._offsets)
        return self._lengths

    def offsets(self) -> torch.Tensor:
        """offsets = [0, cumsum(lengths)], global over all keys (cached)."""
        if self._offsets is None:
            self._offsets = complete_cumsum(self._lengths)
        return self._offsets

    def lengths_or_none(self) -> Optional[torch.Tensor]:
        return self._lengths

    def offsets_or_none(self) -> Optional[torch.Tensor]:
        return self._offsets

    def device(self) -> torch.device:
        return self._values.device

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
        """L_f = sum_b lengths[f * B + b] (cached Python ints: one device sync)."""
        if self._length_per_key is None:
            per_key = self.lengths().reshape(len(self._keys), self._stride).sum(dim=1)
            self._length_per_key = [int(n) for n in per_key.tolist()]
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

    def to(
        self, device: Any, non_blocking: bool = False, dtype: Optional[torch.dtype] = None
    ) -> "KeyedJaggedTensor":
        """A copy on `device`; `dtype`, when given, converts the weights (as in TorchRec)."""

        def move(t, to_dtype=None):
            if t is None:
                return None
            return t.to(device=device, dtype=to_dtype, non_blocking=non_blocking)

        return KeyedJaggedTensor._trusted(
            self._keys,
            move(self._values),
            move(self._weights, dtype),
            move(self._lengths),
            move(self._offsets),
            self._stride,
        )

    # --- per-key views --------------------------------------------------------------------
    def _key_slices(self, f: int):
        opk, batch = self.offset_per_key(), self._stride
        values = self._values[opk[f] : opk[f + 1]]
        weights = None if self._weights is None else self._weights[opk[f] : opk[f + 1]]
        return values, weights, self.lengths()[f * batch : (f + 1) * batch]

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
                "KeyedJaggedTensor.split: segments expected sizes >= 0 summing to the number of keys "
                f"({len(self._keys)}), got {segments}"
            )
        opk, batch, lengths = self.offset_per_key(), self._stride, self.lengths()
        out, start = [], 0
        for size in segments:
            end = start + size
            out.append(
                KeyedJaggedTensor._trusted(
                    self._keys[start:end],
                    self._values[opk[start] : opk[end]],
                    None if self._weights is None else self._weights[opk[start] : opk[end]],
                    lengths[start * batch : end * batch],
                    None,
                    batch,
                )
            )
            start = end
        return out

    def permute(self, indices: Sequence[int], indices_tensor: Any = None) -> "KeyedJaggedTensor":
        """keys'_j = keys[indices[j]], with that key's values, lengths and weights (repeats/drops allowed).

        `indices_tensor` is accepted for TorchRec's signature and not needed."""
        num_keys = len(self._keys)
        indices = [operator.index(i) for i in indices]
        for j, i in enumerate(indices):
            if not 0 <= i < num_keys:
                raise IndexError(
                    f"KeyedJaggedTensor.permute: indices[{j}] expected a key position in "
                    f"[0, {num_keys}), got {i}"
                )
        opk, batch, lengths = self.offset_per_key(), self._stride, self.lengths()

        def gather(tensor: torch.Tensor, bounds) -> torch.Tensor:
            blocks = [tensor[bounds(i) : bounds(i + 1)] for i in indices]
            return torch.cat(blocks, dim=0) if blocks else tensor[:0]

        return KeyedJaggedTensor._trusted(
            [self._keys[i] for i in indices],
            gather(self._values, lambda f: opk[f]),
            None if self._weights is None else gather(self._weights, lambda f: opk[f]),
            gather(lengths, lambda f: f * batch),
            None,
            batch,
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
        name = "KeyedJaggedTensor.from_jt_dict"
        keys = validate_keys(list(jt_dict), name)
        if not keys:
            return KeyedJaggedTensor.empty()
        jts = list(jt_dict.values())
        strides = {key: int(jt.lengths().shape[0]) for key, jt in zip(keys, jts)}
        if len(set(strides.values())) > 1:
            raise NotImplementedError(
                f"{name}: variable batch size per key is not supported; "
                f"expected one batch size for every key, got {strides}"
            )
        weighted = [jt.weights_or_none() is not None for jt in jts]
        if any(weighted) and not all(weighted):
            unweighted = [key for key, w in zip(keys, weighted) if not w]
            raise ValueError(
                f"{name}: weights expected for every key or none, got no weights for {unweighted}"
            )
        return KeyedJaggedTensor(
            keys,
            torch.cat([jt.values() for jt in jts], dim=0),
            weights=torch.cat([jt.weights() for jt in jts]) if all(weighted) else None,
            lengths=torch.cat([jt.lengths() for jt in jts]),
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
            torch.cat([kjt.values() for kjt in kjt_list], dim=0),
            weights=torch.cat([kjt.weights() for kjt in kjt_list]) if all(weighted) else None,
            lengths=torch.cat([kjt.lengths() for kjt in kjt_list]),
            stride=strides[0] if strides else kjt_list[0].stride(),
        )

    @staticmethod
    def empty(
        is_weighted: bool = False,
        device: Any = None,
        values_dtype: Optional[torch.dtype] = None,
        weights_dtype: Optional[torch.dtype] = None,
        lengths_dtype: torch.dtype = torch.int32,
    ) -> "KeyedJaggedTensor":
        """No keys, stride 0, to_dict() == {}."""
        return KeyedJaggedTensor._trusted(
            [],
            torch.empty(0, dtype=values_dtype, device=device),
            torch.empty(0, dtype=weights_dtype, device=device) if is_weighted else None,
            torch.empty(0, dtype=lengths_dtype, device=device),
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


# --- KeyedTensor -------------------------------------------------------------------------------


class KeyedTensor:
    """values cut along key_dim into consecutive segments: kt[k_i] = values.narrow(key_dim, o_i, L_i),
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
        values = _tensor(values)
        name = "KeyedTensor"
        try:
            length_per_key = [operator.index(n) for n in length_per_key]
            key_dim = operator.index(key_dim)
        except TypeError:
            raise TypeError(
                f"{name}: length_per_key and key_dim expected ints, got {length_per_key!r} and {key_dim!r}"
            ) from None
        validate_keyed_tensor(keys, length_per_key, values, key_dim, offset_per_key, name)
        if index_per_key is not None and dict(index_per_key) != {k: i for i, k in enumerate(keys)}:
            raise ValueError(
                f"{name}: index_per_key expected each key mapped to its position, "
                f"got {dict(index_per_key)} for keys {list(keys)}"
            )
        self._keys = list(keys)
        self._length_per_key = length_per_key
        self._values = values
        self._key_dim = key_dim
        self._offset_per_key = [0] + np.cumsum(length_per_key, dtype=np.int64).tolist()

    def keys(self) -> List[str]:
        return list(self._keys)

    def values(self) -> torch.Tensor:
        return self._values

    def key_dim(self) -> int:
        return self._key_dim

    def device(self) -> torch.device:
        return self._values.device

    def length_per_key(self) -> List[int]:
        return list(self._length_per_key)

    def offset_per_key(self) -> List[int]:
        """[0, L_0, L_0 + L_1, ...] (Python ints)."""
        return list(self._offset_per_key)

    def index_per_key(self) -> Dict[str, int]:
        return {key: i for i, key in enumerate(self._keys)}

    def to(self, device: Any, non_blocking: bool = False) -> "KeyedTensor":
        return KeyedTensor(
            self._keys,
            self._length_per_key,
            self._values.to(device, non_blocking=non_blocking),
            self._key_dim,
        )

    def _segment(self, i: int) -> torch.Tensor:
        return self._values.narrow(self._key_dim, self._offset_per_key[i], self._length_per_key[i])

    def __getitem__(self, key: str) -> torch.Tensor:
        """values narrowed to key's segment along key_dim (a view)."""
        index = self.index_per_key()
        if key not in index:
            raise missing_key(key, self._keys, "KeyedTensor")
        return self._segment(index[key])

    def to_dict(self) -> Dict[str, torch.Tensor]:
        """key -> its segment along key_dim, in keys order."""
        return {key: self._segment(i) for i, key in enumerate(self._keys)}

    @staticmethod
    def from_tensor_list(
        keys: Sequence[str], tensors: Sequence[Any], key_dim: int = 1, cat_dim: int = 1
    ) -> "KeyedTensor":
        """values = concat(tensors, cat_dim),  L_i = tensors[i].shape[key_dim]."""
        name = "KeyedTensor.from_tensor_list"
        parts = [_tensor(t) for t in tensors]
        if len(parts) != len(keys):
            raise ValueError(
                f"{name}: tensors expected one entry per key ({len(keys)}), got {len(parts)}"
            )
        if not parts:
            raise ValueError(f"{name}: tensors expected at least one tensor, got none")
        return KeyedTensor(
            keys=keys,
            length_per_key=[t.shape[key_dim] for t in parts],
            values=torch.cat(parts, dim=cat_dim),
            key_dim=key_dim,
        )

    @staticmethod
    def regroup(
        keyed_tensors: Sequence["KeyedTensor"], groups: Sequence[Sequence[str]]
    ) -> List[torch.Tensor]:
        return regroup(keyed_tensors, groups)

    @staticmethod
    def regroup_as_dict(
        keyed_tensors: Sequence["KeyedTensor"], groups: Sequence[Sequence[str]], keys: Sequence[str]
    ) -> Dict[str, torch.Tensor]:
        """{keys[g]: regroup(keyed_tensors, groups)[g]}"""
        if len(keys) != len(groups):
            raise ValueError(
                f"KeyedTensor.regroup_as_dict: keys expected one name per group ({len(groups)}), "
                f"got {len(keys)}"
            )
        return dict(zip(keys, regroup(keyed_tensors, groups)))

    def __repr__(self) -> str:
        return (
            f"KeyedTensor(keys={self._keys}, length_per_key={self._length_per_key}, "
            f"key_dim={self._key_dim})"
        )


def regroup(keyed_tensors: Sequence[KeyedTensor], groups: Sequence[Sequence[str]]) -> List[torch.Tensor]:
    """out_g = concat_{k in group g} kt(k)[k] along the key dimension (1 for pooled embeddings),
    kt(k) the keyed tensor holding key k (the last one when several do, as in TorchRec).

    Shapes: each keyed tensor (B, sum L) -> out_g (B, sum_{k in g} L_k). Differentiable: the
    slices are views and the concatenation is torch.cat.
    """
    key_dim = ref.common_key_dim(keyed_tensors)
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
            out.append(torch.cat(parts, dim=key_dim))
        else:
            first = keyed_tensors[0].values()
            shape = list(first.shape)
            shape[key_dim] = 0
            out.append(first.new_zeros(shape))
    return out


# --- conversions -------------------------------------------------------------------------------


def from_refimpl(obj: Any) -> Any:
    """refimpl JaggedTensor / KeyedJaggedTensor / KeyedTensor -> accel's, sharing memory with the
    NumPy arrays where torch.from_numpy can (no copy, no second validation)."""
    if isinstance(obj, ref.JaggedTensor):
        return JaggedTensor._trusted(
            _tensor(obj.values()),
            _tensor(obj.weights_or_none()),
            _tensor(obj.lengths_or_none()),
            _tensor(obj.offsets_or_none()),
        )
    if isinstance(obj, ref.KeyedJaggedTensor):
        return KeyedJaggedTensor._trusted(
            obj.keys(),
            _tensor(obj.values()),
            _tensor(obj.weights_or_none()),
            _tensor(obj.lengths_or_none()),
            _tensor(obj.offsets_or_none()),
            obj.stride(),
        )
    if isinstance(obj, ref.KeyedTensor):
        return KeyedTensor(obj.keys(), obj.length_per_key(), _tensor(obj.values()), obj.key_dim())
    raise TypeError(
        "from_refimpl: obj expected a refimpl JaggedTensor, KeyedJaggedTensor or KeyedTensor, "
        f"got {type(obj).__name__}"
    )


def _numpy(tensor: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if tensor is None else as_numpy(tensor)


def to_refimpl(obj: Any) -> Any:
    """accel JaggedTensor / KeyedJaggedTensor / KeyedTensor -> refimpl's, sharing memory with CPU
    tensors (.numpy()); CUDA tensors are copied to the host."""
    if isinstance(obj, JaggedTensor):
        return ref.JaggedTensor._trusted(
            _numpy(obj.values()),
            _numpy(obj.weights_or_none()),
            _numpy(obj.lengths_or_none()),
            _numpy(obj.offsets_or_none()),
        )
    if isinstance(obj, KeyedJaggedTensor):
        return ref.KeyedJaggedTensor._trusted(
            obj.keys(),
            _numpy(obj.values()),
            _numpy(obj.weights_or_none()),
            _numpy(obj.lengths_or_none()),
            _numpy(obj.offsets_or_none()),
            obj.stride(),
        )
    if isinstance(obj, KeyedTensor):
        return ref.KeyedTensor(obj.keys(), obj.length_per_key(), _numpy(obj.values()), obj.key_dim())
    raise TypeError(
        "to_refimpl: obj expected an accel JaggedTensor, KeyedJaggedTensor or KeyedTensor, "
        f"got {type(obj).__name__}"
    )


def _torchrec_sparse(what: str) -> Any:
    try:
        from torchrec.sparse import jagged_tensor
    except ImportError as error:
        raise ImportError(_TORCHREC_MISSING.format(what=what)) from error
    return jagged_tensor


def to_torchrec(obj: Any) -> Any:
    """accel (or refimpl) JaggedTensor / KeyedJaggedTensor / KeyedTensor -> TorchRec's, same tensors."""
    trec = _torchrec_sparse("to_torchrec")
    if isinstance(obj, (ref.JaggedTensor, ref.KeyedJaggedTensor, ref.KeyedTensor)):
        obj = from_refimpl(obj)
    if isinstance(obj, JaggedTensor):
        return trec.JaggedTensor(
            values=obj.values(),
            weights=obj.weights_or_none(),
            lengths=obj.lengths_or_none(),
            offsets=obj.offsets_or_none(),
        )
    if isinstance(obj, KeyedJaggedTensor):
        return trec.KeyedJaggedTensor(
            keys=obj.keys(),
            values=obj.values(),
            weights=obj.weights_or_none(),
            lengths=obj.lengths_or_none(),
            offsets=obj.offsets_or_none(),
            stride=obj.stride(),
        )
    if isinstance(obj, KeyedTensor):
        return trec.KeyedTensor(
            keys=obj.keys(),
            length_per_key=obj.length_per_key(),
            values=obj.values(),
            key_dim=obj.key_dim(),
        )
    raise TypeError(
        "to_torchrec: obj expected an accel or refimpl JaggedTensor, KeyedJaggedTensor or "
        f"KeyedTensor, got {type(obj).__name__}"
    )


def from_torchrec(obj: Any) -> Any:
    """TorchRec JaggedTensor / KeyedJaggedTensor / KeyedTensor -> accel's, same tensors, validated."""
    trec = _torchrec_sparse("from_torchrec")
    if isinstance(obj, trec.KeyedJaggedTensor):
        return KeyedJaggedTensor.from_any(obj)
    if isinstance(obj, trec.JaggedTensor):
        offsets = obj.offsets_or_none()
        lengths = obj.lengths_or_none()
        if offsets is not None and offsets.numel() == 0:
            # TorchRec's JaggedTensor.empty() stores offsets with no entry at all.
            offsets, lengths = None, obj.lengths()
        return JaggedTensor(obj.values(), obj.weights_or_none(), lengths, offsets)
    if isinstance(obj, trec.KeyedTensor):
        return KeyedTensor(obj.keys(), obj.length_per_key(), obj.values(), obj.key_dim())
    raise TypeError(
        "from_torchrec: obj expected a TorchRec JaggedTensor, KeyedJaggedTensor or KeyedTensor, "
        f"got {type(obj).__name__}"
    )
