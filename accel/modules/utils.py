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


# --- sequence embeddings back into per-feature jagged tensors ------------------------------------------
# (TorchRec keeps these helpers in utils.py; their imports live here so the module-building helpers above
# do not depend on the sparse types.)

from typing import Dict, List, Optional  # noqa: E402

from accel.sparse import JaggedTensor, KeyedJaggedTensor  # noqa: E402


def _grouped_names(
    embedding_names: List[str], features_to_permute_indices: Optional[Dict[str, List[int]]], who: str
) -> Dict[str, List[int]]:
    """name -> the positions it occupies in embedding_names (first-occurrence order), permuted when asked."""
    positions: Dict[str, List[int]] = {}
    for i, name in enumerate(embedding_names):
        positions.setdefault(name, []).append(i)
    for name, permute in (features_to_permute_indices or {}).items():
        if name not in positions:
            continue
        indices = positions[name]
        if sorted(permute) != list(range(len(indices))):
            raise ValueError(
                f"{who}: features_to_permute_indices['{name}'] expected a permutation of "
                f"{list(range(len(indices)))} (one entry per occurrence of the name), got {list(permute)}"
            )
        positions[name] = [indices[p] for p in permute]
    return positions


def _select_rows(embeddings: torch.Tensor, reverse_indices: torch.Tensor, who: str) -> torch.Tensor:
    """E[reverse_indices], every index checked against the rows of E first."""
    rows = embeddings.shape[0]
    index = reverse_indices.long()
    outside = (index < 0) | (index >= rows)
    if bool(outside.any()):
        j = int(outside.nonzero()[0, 0])
        raise IndexError(
            f"{who}: reverse_indices expected row numbers in [0, {rows}), got {int(index[j])} at position {j}"
        )
    return embeddings.index_select(0, index)


def _jagged_by_name(
    who: str,
    embeddings: torch.Tensor,
    lengths: torch.Tensor,
    values: Optional[torch.Tensor],
    length_per_key: List[int],
    embedding_names: List[str],
    need_indices: bool,
    features_to_permute_indices: Optional[Dict[str, List[int]]],
) -> Dict[str, JaggedTensor]:
    """out[name] = JaggedTensor(rows of its keys side by side, lengths and ids of its first key)."""
    num_keys = lengths.shape[0]
    if len(embedding_names) != num_keys:
        raise ValueError(
            f"{who}: embedding_names expected one name per feature ({num_keys}), got {len(embedding_names)}"
        )
    total = sum(length_per_key)
    if embeddings.dim() != 2 or embeddings.shape[0] != total:
        raise ValueError(
            f"{who}: embeddings expected shape ({total}, D) (one row per id), got {tuple(embeddings.shape)}"
        )
    rows = torch.split(embeddings, length_per_key, dim=0)
    ids = torch.split(values, length_per_key) if need_indices and values is not None else None
    out: Dict[str, JaggedTensor] = {}
    for name, indices in _grouped_names(embedding_names, features_to_permute_indices, who).items():
        first = indices[0]
        if len(indices) == 1:
            part = rows[first]
        else:
            # Several keys under one name are column shards of one feature: same ids, columns side by side.
            for i in indices[1:]:
                if length_per_key[i] != length_per_key[first]:
                    raise ValueError(
                        f"{who}: embedding name '{name}' expected its features to hold the same number of ids "
                        f"({length_per_key[first]}), got {length_per_key[i]}"
                    )
            part = torch.cat([rows[i] for i in indices], dim=1)
        out[name] = JaggedTensor._trusted(part, None if ids is None else ids[first], lengths[first], None)
    return out


def construct_jagged_tensors(
    embeddings: torch.Tensor,
    features: KeyedJaggedTensor,
    embedding_names: List[str],
    need_indices: bool = False,
    features_to_permute_indices: Optional[Dict[str, List[int]]] = None,
    original_features: Optional[KeyedJaggedTensor] = None,
    reverse_indices: Optional[torch.Tensor] = None,
    seq_vbe_ctx: Optional[object] = None,
    use_gather_select: bool = False,
) -> Dict[str, JaggedTensor]:
    """out[name_f] = JaggedTensor(values = E[o_f : o_{f+1}], lengths = lengths_f, weights = ids_f if need_indices).

    E = embeddings[reverse_indices] when given; o = the KJT's offset_per_key (original_features
    replaces features when given). A name shared by several keys concatenates their rows along
    dimension 1 (column shards), in features_to_permute_indices[name] order when given.
    Shapes: embeddings (n, D) -> {name: JaggedTensor(values (n_f, D'), lengths (B,))}.
    `use_gather_select` picks TorchRec's gather path, which selects the same rows.
    """
    who = "construct_jagged_tensors"
    if seq_vbe_ctx is not None:
        raise NotImplementedError(
            f"{who}: variable batch size per key is not supported; seq_vbe_ctx expected None, "
            f"got {type(seq_vbe_ctx).__name__}"
        )
    kjt = KeyedJaggedTensor.from_any(original_features if original_features is not None else features)
    if reverse_indices is not None:
        embeddings = _select_rows(embeddings, reverse_indices, who)
    lengths = kjt.lengths().reshape(len(kjt.keys()), kjt.stride())
    return _jagged_by_name(
        who, embeddings, lengths, kjt.values(), kjt.length_per_key(), list(embedding_names),
        need_indices, features_to_permute_indices,
    )


def construct_jagged_tensors_inference(
    embeddings: torch.Tensor,
    lengths: torch.Tensor,
    values: torch.Tensor,
    embedding_names: List[str],
    need_indices: bool = False,
    features_to_permute_indices: Optional[Dict[str, List[int]]] = None,
    reverse_indices: Optional[torch.Tensor] = None,
    remove_padding: bool = False,
) -> Dict[str, JaggedTensor]:
    """construct_jagged_tensors with the lengths given as a (F, B) tensor and the ids as `values`.

    E = embeddings[reverse_indices] when given, else embeddings[: sum(lengths)] when
    remove_padding (padding rows past the ids dropped); n_f = sum_b lengths[f, b].
    """
    who = "construct_jagged_tensors_inference"
    if lengths.dim() != 2:
        raise ValueError(f"{who}: lengths expected a 2-D (F, B) tensor, got shape {tuple(lengths.shape)}")
    length_per_key = [int(n) for n in lengths.sum(dim=1).tolist()]
    if reverse_indices is not None:
        embeddings = _select_rows(embeddings, reverse_indices, who)
    elif remove_padding:
        embeddings = embeddings[: sum(length_per_key)]
    if need_indices and values.shape[0] != sum(length_per_key):
        raise ValueError(
            f"{who}: values expected {sum(length_per_key)} ids (sum of lengths), got {values.shape[0]}"
        )
    return _jagged_by_name(
        who, embeddings, lengths, values, length_per_key, list(embedding_names),
        need_indices, features_to_permute_indices,
    )
