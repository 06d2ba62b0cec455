"""Boundary checks for the sparse types and for embedding ids.

Every failed check raises ValueError (a wrong value or shape), TypeError (a wrong type or dtype)
or IndexError (an id outside its table) whose message reads

    <name>: <argument>[ (key 'k', sample b)] expected <what>, got <what was received>

Each validator is a layout check (reads only `.shape`, `.ndim` and `.dtype`, so it accepts torch
tensors as well and never touches their data) followed by a content check (one pass over the
NumPy lengths/offsets). accel runs the layout checks on its tensors unchanged, folds the content
checks into one device round trip, and comes back here to word the error when one fails.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from refimpl.base import as_numpy

# torch dtypes are recognised by name so that this module never imports torch.
_TORCH_INTEGER_DTYPES = frozenset(
    f"torch.{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64)
)


def is_integer_dtype(dtype: Any) -> bool:
    """True for NumPy or torch integer dtypes (bool is not an integer here)."""
    try:
        return np.dtype(dtype).kind in "iu"
    except TypeError:
        return str(dtype) in _TORCH_INTEGER_DTYPES


def _numel(array: Any) -> int:
    return int(np.prod(tuple(array.shape), dtype=np.int64))


def _shape(array: Any) -> tuple:
    return tuple(int(s) for s in array.shape)


def _locator(keys: Optional[Sequence[str]], stride: Optional[int]) -> Callable[[int], str]:
    """Maps a flat row index to " (key 'k', sample b)" for a KJT, " (row b)" otherwise."""
    if keys and stride:
        return lambda i: f" (key '{keys[i // stride]}', sample {i % stride})"
    return lambda i: f" (row {i})"


# --- keys ------------------------------------------------------------------------------------


def validate_keys(keys: Any, name: str, allow_duplicates: bool = False) -> List[str]:
    """keys is a list (or tuple) of str, unique unless `allow_duplicates`; returns it as a list."""
    if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
        raise TypeError(f"{name}: keys expected a list of str, got {type(keys).__name__}")
    first_seen: Dict[str, int] = {}
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise TypeError(f"{name}: keys[{i}] expected a str, got {type(key).__name__} {key!r}")
        if key in first_seen and not allow_duplicates:
            raise ValueError(
                f"{name}: keys expected unique names, got '{key}' at positions "
                f"{first_seen[key]} and {i}"
            )
        first_seen.setdefault(key, i)
    return list(keys)


class MissingKeyError(KeyError, ValueError):
    """A key that is not there: a KeyError for mapping-style callers (as TorchRec raises), and
    a ValueError for callers that treat it as bad input."""

    def __str__(self) -> str:
        # KeyError would print the message quoted, as if it were the key itself.
        return str(self.args[0]) if self.args else ""


def missing_key(key: Any, keys: Sequence[str], name: str) -> MissingKeyError:
    """The error for `key` absent from `keys` (returned, for the caller to raise)."""
    return MissingKeyError(f"{name}: key expected one of {list(keys)}, got {key!r}")


def reject_variable_batch(stride_per_key_per_rank: Any, inverse_indices: Any, name: str) -> None:
    """Variable batch size per key (TorchRec's VBE) is not supported: both must be None."""
    for arg, value in (
        ("stride_per_key_per_rank", stride_per_key_per_rank),
        ("inverse_indices", inverse_indices),
    ):
        if value is not None:
            raise NotImplementedError(
                f"{name}: variable batch size per key is not supported; {arg} expected None, "
                f"got {type(value).__name__}"
            )


# --- jagged layout and contents --------------------------------------------------------------


def check_jagged_layout(
    values: Any, lengths: Any, offsets: Any, weights: Any, name: str = "JaggedTensor"
) -> None:
    """Shapes and dtypes: values 1-D or 2-D; lengths and/or offsets 1-D integer, offsets of
    len(lengths) + 1 entries; weights one per value."""
    if values.ndim not in (1, 2):
        raise ValueError(
            f"{name}: values expected a 1-D [total] or 2-D [total, D] array, "
            f"got {values.ndim}-D shape {_shape(values)}"
        )
    if lengths is None and offsets is None:
        raise ValueError(f"{name}: expected lengths or offsets, got neither")
    for arg, array in (("lengths", lengths), ("offsets", offsets)):
        if array is None:
            continue
        if array.ndim != 1:
            raise ValueError(f"{name}: {arg} expected a 1-D array, got shape {_shape(array)}")
        # An empty array carries no values, so its dtype cannot be wrong (as in TorchRec).
        if _numel(array) and not is_integer_dtype(array.dtype):
            raise TypeError(f"{name}: {arg} expected an integer dtype, got {array.dtype}")
    if offsets is not None and offsets.shape[0] == 0:
        raise ValueError(
            f"{name}: offsets expected at least one entry (offsets[0] == 0), got an empty array"
        )
    if lengths is not None and offsets is not None and offsets.shape[0] != lengths.shape[0] + 1:
        raise ValueError(
            f"{name}: lengths and offsets expected len(offsets) == len(lengths) + 1 = "
            f"{lengths.shape[0] + 1}, got len(offsets) = {offsets.shape[0]}"
        )
    if weights is not None and (weights.ndim != 1 or weights.shape[0] != values.shape[0]):
        raise ValueError(
            f"{name}: weights expected shape ({values.shape[0]},) (one per value), "
            f"got {_shape(weights)}"
        )


def check_jagged_contents(
    num_values: int,
    lengths: Optional[np.ndarray],
    offsets: Optional[np.ndarray],
    name: str = "JaggedTensor",
    keys: Optional[Sequence[str]] = None,
    stride: Optional[int] = None,
) -> None:
    """offsets[0] == 0, offsets non-decreasing, offsets[-1] == num_values; 0 <= lengths <= num_values,
    sum(lengths) == num_values; lengths[i] == offsets[i + 1] - offsets[i] when both are given.

    With `keys` and `stride` (a KJT) each failing row is named by key and sample."""
    where = _locator(keys, stride)
    if offsets is not None:
        if offsets[0] != 0:
            raise ValueError(f"{name}: offsets expected offsets[0] == 0, got {offsets[0]}")
        drops = np.flatnonzero(offsets[1:] < offsets[:-1])
        if drops.size:
            i = int(drops[0])
            raise ValueError(
                f"{name}: offsets{where(i)} expected non-decreasing offsets, got "
                f"offsets[{i + 1}] = {offsets[i + 1]} < offsets[{i}] = {offsets[i]}"
            )
        if offsets[-1] != num_values:
            raise ValueError(
                f"{name}: offsets expected offsets[-1] == number of values ({num_values}), "
                f"got {offsets[-1]}"
            )
    if lengths is None:
        return
    negative = np.flatnonzero(lengths < 0)
    if negative.size:
        i = int(negative[0])
        raise ValueError(f"{name}: lengths{where(i)} expected >= 0, got lengths[{i}] = {lengths[i]}")
    # No row holds more than all the values. Checked before the sum: lengths near 2^62 would make the int64
    # sum wrap around, possibly onto num_values; bounded by num_values, the sum stays below rows * num_values.
    over = np.flatnonzero(lengths > num_values)
    if over.size:
        i = int(over[0])
        raise ValueError(
            f"{name}: lengths{where(i)} expected <= number of values ({num_values}), "
            f"got lengths[{i}] = {lengths[i]}"
        )
    if offsets is not None:
        spans = np.diff(offsets.astype(np.int64))
        differ = np.flatnonzero(spans != lengths)
        if differ.size:
            i = int(differ[0])
            raise ValueError(
                f"{name}: lengths and offsets{where(i)} expected lengths[{i}] == "
                f"offsets[{i + 1}] - offsets[{i}] = {spans[i]}, got lengths[{i}] = {lengths[i]}"
            )
    total = int(np.sum(lengths, dtype=np.int64))
    if total != num_values:
        raise ValueError(
            f"{name}: lengths expected sum(lengths) == number of values ({num_values}), got {total}"
        )


def validate_jagged(
    values: Any, lengths: Any, offsets: Any, weights: Any, name: str = "JaggedTensor"
) -> None:
    """All checks of a JaggedTensor's parts (see check_jagged_layout, check_jagged_contents)."""
    check_jagged_layout(values, lengths, offsets, weights, name)
    check_jagged_contents(values.shape[0], lengths, offsets, name)


# --- keyed jagged ----------------------------------------------------------------------------


def check_keyed_jagged_layout(
    keys: Any,
    values: Any,
    lengths: Any,
    offsets: Any,
    weights: Any,
    stride: Optional[int] = None,
    name: str = "KeyedJaggedTensor",
    allow_duplicate_keys: bool = False,
) -> int:
    """Jagged layout plus: F = len(keys) unique keys, F * B rows, stride == B when given.

    Returns B, the batch size (`stride` if given, else rows // F, else 0 without keys)."""
    validate_keys(keys, name, allow_duplicate_keys)
    check_jagged_layout(values, lengths, offsets, weights, name)
    arg = "lengths" if lengths is not None else "offsets"
    rows = lengths.shape[0] if lengths is not None else offsets.shape[0] - 1
    if stride is not None and (
        isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 0
    ):
        raise TypeError(f"{name}: stride expected a non-negative int, got {stride!r}")
    num_keys = len(keys)
    if num_keys == 0:
        if rows:
            raise ValueError(
                f"{name}: {arg} expected no rows for a KeyedJaggedTensor without keys, got {rows}"
            )
        return int(stride) if stride is not None else 0
    if rows % num_keys:
        raise ValueError(
            f"{name}: {arg} expected a row count divisible by the number of keys ({num_keys}), "
            f"got {rows} rows"
        )
    if stride is not None and rows != num_keys * stride:
        raise ValueError(
            f"{name}: stride expected rows / number of keys = {rows // num_keys}, got {stride}"
        )
    return rows // num_keys


def validate_keyed_jagged(
    keys: Any,
    values: Any,
    lengths: Any,
    offsets: Any,
    weights: Any,
    stride: Optional[int] = None,
    name: str = "KeyedJaggedTensor",
    allow_duplicate_keys: bool = False,
) -> int:
    """All checks of a KeyedJaggedTensor's parts; errors name the key and sample. Returns B."""
    batch = check_keyed_jagged_layout(
        keys, values, lengths, offsets, weights, stride, name, allow_duplicate_keys
    )
    check_jagged_contents(values.shape[0], lengths, offsets, name, keys, batch)
    return batch


# --- dense <-> jagged ------------------------------------------------------------------------


def check_dense_lengths_layout(
    values: Any, lengths: Any, weights: Any, name: str = "JaggedTensor.from_dense_lengths"
) -> None:
    """values [B, N] or [B, N, D]; lengths 1-D integer of B entries; weights [B, N]."""
    if values.ndim not in (2, 3):
        raise ValueError(
            f"{name}: values expected a 2-D [B, N] or 3-D [B, N, D] array, got shape {_shape(values)}"
        )
    if lengths.ndim != 1 or lengths.shape[0] != values.shape[0]:
        raise ValueError(
            f"{name}: lengths expected shape ({values.shape[0]},) (one per row of values), "
            f"got {_shape(lengths)}"
        )
    if _numel(lengths) and not is_integer_dtype(lengths.dtype):
        raise TypeError(f"{name}: lengths expected an integer dtype, got {lengths.dtype}")
    if weights is not None and _shape(weights) != _shape(values)[:2]:
        raise ValueError(
            f"{name}: weights expected shape {_shape(values)[:2]}, got {_shape(weights)}"
        )


def check_dense_lengths_contents(
    width: int, lengths: np.ndarray, name: str = "JaggedTensor.from_dense_lengths"
) -> None:
    """0 <= lengths[b] <= N (the padded width)."""
    outside = np.flatnonzero((lengths < 0) | (lengths > width))
    if outside.size:
        b = int(outside[0])
        raise ValueError(
            f"{name}: lengths (row {b}) expected 0 <= lengths[b] <= {width} (the padded width), "
            f"got {lengths[b]}"
        )


# --- keyed tensor ----------------------------------------------------------------------------


def validate_keyed_tensor(
    keys: Any,
    length_per_key: Any,
    values: Any,
    key_dim: Any,
    offset_per_key: Optional[Sequence[int]] = None,
    name: str = "KeyedTensor",
) -> None:
    """values.shape[key_dim] == sum(length_per_key), one non-negative length per unique key;
    offset_per_key, when given, equals [0, cumsum(length_per_key)]."""
    validate_keys(keys, name)
    if isinstance(length_per_key, (str, bytes)) or not hasattr(length_per_key, "__len__"):
        raise TypeError(
            f"{name}: length_per_key expected a list of int, got {type(length_per_key).__name__}"
        )
    if len(length_per_key) != len(keys):
        raise ValueError(
            f"{name}: length_per_key expected {len(keys)} entries (one per key), "
            f"got {len(length_per_key)}"
        )
    for key, length in zip(keys, length_per_key):
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(
                f"{name}: length_per_key (key '{key}') expected a non-negative int, got {length!r}"
            )
    if isinstance(key_dim, bool) or not isinstance(key_dim, (int, np.integer)):
        raise TypeError(f"{name}: key_dim expected an int, got {key_dim!r}")
    if values.ndim == 0 or not -values.ndim <= key_dim < values.ndim:
        raise ValueError(
            f"{name}: key_dim expected a dimension of values (shape {_shape(values)}), got {key_dim}"
        )
    total = int(sum(int(length) for length in length_per_key))
    if values.shape[key_dim] != total:
        raise ValueError(
            f"{name}: values expected size sum(length_per_key) = {total} along key_dim "
            f"{key_dim}, got shape {_shape(values)}"
        )
    expected_offsets = [0] + np.cumsum([int(x) for x in length_per_key], dtype=np.int64).tolist()
    if offset_per_key is not None and [int(x) for x in offset_per_key] != expected_offsets:
        raise ValueError(
            f"{name}: offset_per_key expected {expected_offsets}, got {list(offset_per_key)}"
        )


# --- embedding ids ---------------------------------------------------------------------------


def check_ids_layout(ids: Any, num_embeddings: Any, feature: str, table: str) -> None:
    """num_embeddings a positive int; ids of an integer dtype (when non-empty)."""
    if (
        isinstance(num_embeddings, bool)
        or not isinstance(num_embeddings, (int, np.integer))
        or num_embeddings <= 0
    ):
        raise ValueError(
            f"table '{table}': num_embeddings expected a positive int, got {num_embeddings!r}"
        )
    if _numel(ids) and not is_integer_dtype(ids.dtype):
        raise TypeError(
            f"feature '{feature}' (table '{table}'): ids expected an integer dtype, got {ids.dtype}"
        )


def validate_ids_in_range(ids: Any, num_embeddings: int, feature: str, table: str) -> None:
    """0 <= id < num_embeddings for every id of `feature` looked up in `table`."""
    ids = np.asarray(ids)
    check_ids_layout(ids, num_embeddings, feature, table)
    flat = ids.reshape(-1)
    outside = np.flatnonzero((flat < 0) | (flat >= num_embeddings))
    if outside.size:
        i = int(outside[0])
        raise IndexError(
            f"feature '{feature}' (table '{table}'): ids expected values in "
            f"[0, {num_embeddings}), got id {flat[i]} at position {i}"
        )


def real_array(value: Any, name: str, dtype: Any = None) -> np.ndarray:
    """value as a NumPy array of a real dtype (bool, integer or floating point), cast to `dtype` when given.

    TypeError for any other dtype: refimpl casts dense inputs to the module's dtype, and from a complex
    array that cast would keep the real part only (a silent wrong answer); strings and objects have no cast.
    """
    array = as_numpy(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} expected a real (bool, integer or floating-point) array, got dtype {array.dtype}")
    return array if dtype is None else array.astype(dtype, copy=False)
