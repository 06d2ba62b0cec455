"""DeepFM and FactorizationMachine over a list of embeddings (mirrors `torchrec.modules.deepfm`).

Both modules first flatten every embedding after the batch dimension and concatenate them.
`factorization_machine` is what TorchRec computes (all flattened scalars interact);
`factorization_machine_fieldwise` is the per-dimension FM of the DeepFM paper that the page
describes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refimpl.base import Module, prefixed
from refimpl.validate import real_array


def _as_embedding_list(embeddings: Any) -> List[np.ndarray]:
    if isinstance(embeddings, np.ndarray) or not isinstance(embeddings, (list, tuple)):
        raise TypeError(
            f"embeddings: expected a list of arrays, got {type(embeddings).__name__}"
        )
    if len(embeddings) == 0:
        raise ValueError("embeddings: expected a non-empty list of arrays, got []")
    return [real_array(e, f"embeddings[{i}]:") for i, e in enumerate(embeddings)]


def flatten_embeddings(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """flat = [E_0.reshape(B, -1), E_1.reshape(B, -1), ...] concatenated along dim 1
    Shapes: E_i (B, ...) -> (B, sum_i prod(E_i.shape[1:])); row-major flattening.
    Source: semantics.md section 4 (torch.cat of t.flatten(1))."""
    E = _as_embedding_list(embeddings)
    B = E[0].shape[0] if E[0].ndim else None
    for i, E_i in enumerate(E):
        if E_i.ndim < 2:
            raise ValueError(
                f"embeddings[{i}]: expected an array of shape (B, ...) with at least 2 dims, "
                f"got shape {tuple(E_i.shape)}"
            )
        if E_i.shape[0] != B:
            raise ValueError(
                f"embeddings[{i}]: expected batch size {B} (that of embeddings[0]), got {E_i.shape[0]}"
            )
    # An explicit width (not -1) keeps B = 0 batches reshapeable.
    return np.concatenate([E_i.reshape(B, int(np.prod(E_i.shape[1:]))) for E_i in E], axis=1)


def flatten_embeddings_backward(
    grad_flat: np.ndarray, shapes: Sequence[Tuple[int, ...]]
) -> List[np.ndarray]:
    """dL/dE_i = the columns of dL/dflat that came from E_i, reshaped to E_i's shape
    Shapes: grad_flat (B, sum_i prod(shape_i[1:])) -> [shape_0, shape_1, ...]."""
    widths = [int(np.prod(s[1:], dtype=np.int64)) for s in shapes]
    bounds = np.cumsum([0] + widths)
    return [grad_flat[:, bounds[i] : bounds[i + 1]].reshape(s) for i, s in enumerate(shapes)]


def factorization_machine(flat: np.ndarray) -> np.ndarray:
    """y = 1/2 ((sum_j x_j)^2 - sum_j x_j^2)
    Shapes: flat x (B, M) -> (B, 1); j runs over all M flattened scalars of a row.
    Source: semantics.md section 4 (TorchRec's FactorizationMachine; D8: not the paper's FM)."""
    x = flat
    return 0.5 * (x.sum(axis=1, keepdims=True) ** 2 - (x**2).sum(axis=1, keepdims=True))


def factorization_machine_backward(grad_y: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """dL/dx_j = g (S - x_j),  S = sum_k x_k
    Shapes: grad_y g (B, 1); flat x (B, M) -> (B, M)."""
    x, g = flat, grad_y
    S = x.sum(axis=1, keepdims=True)
    return g * (S - x)


def factorization_machine_pairwise(flat: np.ndarray) -> np.ndarray:
    """y = sum_{j<k} x_j x_k
    Shapes: flat x (B, M) -> (B, 1).
    Source: the pairwise form that `factorization_machine` rewrites; a brute-force check of it."""
    x = flat
    M = x.shape[1]
    y = np.zeros((x.shape[0], 1), dtype=x.dtype)
    for j in range(M):
        for k in range(j + 1, M):
            y[:, 0] += x[:, j] * x[:, k]
    return y


def factorization_machine_fieldwise(embeddings_3d: Any) -> np.ndarray:
    """y = 1/2 sum_d [(sum_f v_fd)^2 - sum_f v_fd^2]
    Shapes: a list of (B, F_i, D) arrays (or one (B, F, D) array), all with the same D, stacked to
    v (B, F, D) -> (B, 1); only fields f interact, dimension d with dimension d.
    Source: the page's FactorizationMachine description (DeepFM paper, Guo et al. 2017, eq. 2)."""
    parts = [embeddings_3d] if isinstance(embeddings_3d, np.ndarray) else _as_embedding_list(embeddings_3d)
    parts = [np.asarray(p) for p in parts]
    for i, p in enumerate(parts):
        if p.ndim != 3:
            raise ValueError(
                f"embeddings_3d[{i}]: expected shape (B, F, D), got shape {tuple(p.shape)}"
            )
        if p.shape[0] != parts[0].shape[0] or p.shape[2] != parts[0].shape[2]:
            raise ValueError(
                f"embeddings_3d[{i}]: expected shape ({parts[0].shape[0]}, F, {parts[0].shape[2]}) "
                f"(batch and dimension of embeddings_3d[0]), got {tuple(p.shape)}"
            )
    v = np.concatenate(parts, axis=1)
    per_dim = v.sum(axis=1) ** 2 - (v**2).sum(axis=1)
    return 0.5 * per_dim.sum(axis=1, keepdims=True)


class FactorizationMachine(Module):
    """y = 1/2 ((sum_j x_j)^2 - sum_j x_j^2) over the flattened embeddings (see `factorization_machine`).

    No parameters. Computes in the inputs' dtype (NumPy's promotion of the list), or in `dtype`
    when one is given.
    """

    def __init__(self, *, dtype: Any = None, device: Any = None) -> None:
        super().__init__(np.float64 if dtype is None else dtype)
        self._cast = dtype is not None
        self._shapes: Optional[List[Tuple[int, ...]]] = None
        self._flat: Optional[np.ndarray] = None

    def forward(self, embeddings: Sequence[np.ndarray]) -> np.ndarray:
        E = _as_embedding_list(embeddings)
        flat = flatten_embeddings(E)
        if self._cast:
            flat = flat.astype(self.dtype, copy=False)
        self._shapes, self._flat = [e.shape for e in E], flat
        return factorization_machine(flat)

    def backward(self, grad_output: Any) -> Tuple[List[np.ndarray], Dict[str, np.ndarray]]:
        if self._flat is None or self._shapes is None:
            raise RuntimeError("FactorizationMachine.backward called before forward")
        g = real_array(grad_output, "FactorizationMachine: grad_output", self._flat.dtype)
        expected = (self._flat.shape[0], 1)
        if g.shape != expected:
            raise ValueError(f"FactorizationMachine: grad_output expected shape {expected}, got {g.shape}")
        grad_flat = factorization_machine_backward(g, self._flat)
        return flatten_embeddings_backward(grad_flat, self._shapes), {}


def deepfm(flat: np.ndarray, dense_module: Any) -> np.ndarray:
    """y = dense_module(flat),  flat = the embeddings flattened after dim 0 and concatenated
    Shapes: flat (B, sum_i prod(E_i.shape[1:])) -> whatever dense_module returns.
    Source: page, torchrec.modules.deepfm.DeepFM; semantics.md section 4."""
    return dense_module(flat)


class DeepFM(Module):
    """y = dense_module(flat embeddings) (see `deepfm`).

    state_dict: `dense_module.*`. `dense_module` is a refimpl Module (for example
    refimpl.nn.Linear or MLP) whose input width is the total flattened size; its backward
    supplies the gradient that is split back into the list of embeddings.
    """

    def __init__(self, dense_module: Module, *, dtype: Any = None, device: Any = None) -> None:
        if not isinstance(dense_module, Module):
            raise TypeError(
                f"DeepFM: dense_module expected a refimpl Module, got {type(dense_module).__name__}"
            )
        super().__init__(dense_module.dtype if dtype is None else dtype)
        self._cast = dtype is not None
        self.dense_module = dense_module
        self.register_module("dense_module", dense_module)
        self._shapes: Optional[List[Tuple[int, ...]]] = None

    def forward(self, embeddings: Sequence[np.ndarray]) -> np.ndarray:
        E = _as_embedding_list(embeddings)
        flat = flatten_embeddings(E)
        if self._cast:
            flat = flat.astype(self.dtype, copy=False)
        self._shapes = [e.shape for e in E]
        return deepfm(flat, self.dense_module)

    def backward(self, grad_output: Any) -> Tuple[List[np.ndarray], Dict[str, np.ndarray]]:
        if self._shapes is None:
            raise RuntimeError("DeepFM.backward called before forward")
        grad_flat, dense_grads = self.dense_module.backward(grad_output)
        return flatten_embeddings_backward(grad_flat, self._shapes), prefixed(dense_grads, "dense_module.")
