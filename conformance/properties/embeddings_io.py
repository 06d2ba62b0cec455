"""Matched embedding modules and their jagged inputs, in refimpl, accel and TorchRec.

The dense adapters (`conformance.adapters`) take arrays in and give arrays out; the embedding
modules take a KeyedJaggedTensor (or a dict of JaggedTensors) and give a KeyedTensor or a dict of
JaggedTensors. This file is their counterpart:
    Batch           a package-neutral KJT: keys, lengths, int64 ids, float64 weights or None, B
    to_kjt          that batch as the package's KeyedJaggedTensor (its dict of JTs for the
                    position-weighted module)
    construct       a Build in any package: tables are nested `Build("EmbeddingBagConfig" |
                    "EmbeddingConfig", (rows, D), kwargs)` with enums written as strings, so that
                    builds stay JSON (golden manifests) and each package gets its own enums
    make_pair       the torch module under torch.manual_seed(seed), its state (constant
                    parameters replaced by seeded noise, adapters.exercise) loaded into it and into
                    refimpl, as conformance.adapters.make_pair does for the dense modules
    outputs         a forward's result as named float64 arrays ("out" for an EBC's values,
                    "values[name]" / "lengths[name]" / "indices[name]" for an EC, "weights[f]" for
                    position weights), the keys and their order checked with them
    ref_gradients / torch_gradients
                    gradients of L = sum_k <output_k, G_k>, named "grad <state key>" and
                    "grad weights" (the KJT's per-id weights)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from conformance import adapters
from conformance.records import Build

CONFIGS = ("EmbeddingBagConfig", "EmbeddingConfig")
KJT_MODULES = ("EmbeddingBagCollection", "EmbeddingCollection", "PositionWeightedProcessor")
DICT_MODULES = ("PositionWeightedModule",)
EMBEDDING_MODULES = KJT_MODULES + DICT_MODULES


@dataclass(frozen=True, eq=False)
class Batch:
    """A keyed jagged batch, TorchRec's layout: bag b of key k is values[offsets[k*B+b] : offsets[k*B+b+1]]."""

    keys: Tuple[str, ...]
    lengths: np.ndarray  # int64 (F * B,)
    values: np.ndarray  # int64 ids
    weights: Optional[np.ndarray]  # float64 per id, or None
    stride: int

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def bag(self, key: str, b: int) -> slice:
        """The value positions of sample b of `key`."""
        k = self.keys.index(key)
        off = self.offsets
        return slice(int(off[k * self.stride + b]), int(off[k * self.stride + b + 1]))

    def key_slice(self, key: str) -> slice:
        k = self.keys.index(key)
        off = self.offsets
        return slice(int(off[k * self.stride]), int(off[(k + 1) * self.stride]))

    def with_weights(self, weights: Optional[np.ndarray]) -> "Batch":
        return Batch(self.keys, self.lengths, self.values, weights, self.stride)

    def permuted(self, order: Sequence[int]) -> "Batch":
        """The same bags with the keys in `order` (values, lengths and weights moved with them)."""
        keys = tuple(self.keys[k] for k in order)
        lengths, values, weights = [], [], []
        for k in order:
            key = self.keys[k]
            lengths.append(self.lengths[k * self.stride:(k + 1) * self.stride])
            values.append(self.values[self.key_slice(key)])
            if self.weights is not None:
                weights.append(self.weights[self.key_slice(key)])
        return Batch(keys, _cat(lengths, np.int64), _cat(values, np.int64),
                     _cat(weights, np.float64) if self.weights is not None else None, self.stride)


def _cat(parts: List[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def batch(keys: Sequence[str], lengths: Sequence[int], values: Sequence[int], weights: Any = None,
          stride: Optional[int] = None) -> Batch:
    """A Batch from plain lists; B defaults to len(lengths) / len(keys)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    B = stride if stride is not None else (lengths.shape[0] // len(keys) if keys else 0)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return Batch(tuple(keys), lengths, np.asarray(values, dtype=np.int64), w, B)


# --- tables and modules ----------------------------------------------------------------------
def table(kind: str, name: str, rows: int, dim: int, features: Sequence[str], **kwargs: Any) -> Build:
    """A table description: Build(kind, (rows, dim), name, feature_names and any config field)."""
    items = (("name", name), ("feature_names", tuple(features))) + tuple(sorted(kwargs.items()))
    return Build(kind, (rows, dim), items)


def tables_of(build: Build) -> Tuple[Build, ...]:
    return tuple(build.args[0]) if build.module in ("EmbeddingBagCollection", "EmbeddingCollection") else ()


def feature_rows(build: Build) -> Dict[str, int]:
    """Each feature's id range: the smallest num_embeddings over the tables that read it."""
    rows: Dict[str, int] = {}
    for t in tables_of(build):
        for f in dict(t.kwargs)["feature_names"]:
            rows[f] = min(rows.get(f, t.args[0]), t.args[0])
    return rows


def config(build: Build, package: str) -> Any:
    """The table's config object in `package` (TorchRec's own classes and enums for torchrec)."""
    if package == "torchrec":
        import torchrec.modules.embedding_configs as cfg
    else:
        import refimpl.modules.embedding_configs as cfg
    kwargs = dict(build.kwargs)
    kwargs["feature_names"] = list(kwargs.get("feature_names", ()))
    if "pooling" in kwargs:
        kwargs["pooling"] = cfg.PoolingType(kwargs["pooling"])
    if "data_type" in kwargs:
        kwargs["data_type"] = cfg.DataType(kwargs["data_type"])
    return getattr(cfg, build.module)(*build.args, **kwargs)


def _arguments(build: Build, package: str, seed: int, dtype: Any) -> Tuple[List[Any], Dict[str, Any]]:
    args: List[Any] = []
    for a in build.args:
        if isinstance(a, Build):
            args.append(construct(a, package, seed=seed, dtype=dtype, reseed=False))
        elif isinstance(a, tuple) and a and isinstance(a[0], Build) and a[0].module in CONFIGS:
            args.append([config(t, package) for t in a])
        elif isinstance(a, tuple) and a and isinstance(a[0], Build):
            args.append([construct(t, package, seed=seed, dtype=dtype, reseed=False) for t in a])
        elif isinstance(a, tuple) and a and isinstance(a[0], tuple):  # (feature, length) pairs: a dict
            args.append({k: v for k, v in a})
        else:
            args.append(list(a) if isinstance(a, tuple) else a)
    return args, dict(build.kwargs)


def construct(build: Build, package: str, *, seed: int = 0, dtype: Any = np.float64, reseed: bool = True) -> Any:
    """`build` in `package`; refimpl with dtype= and rng=default_rng(seed), torch packages under
    torch.manual_seed(seed) in float32 (nested modules draw from the current stream)."""
    if build.module in EMBEDDING_MODULES + ("EmbeddingTower", "EmbeddingTowerCollection"):
        cls = adapters.module_class(package, build.module)
    elif build.module == "KeyedLinear":
        cls = keyed_linear_class(package)
    else:
        return adapters.construct(build, package, seed=seed, dtype=dtype, reseed=reseed)
    if package == "refimpl":
        args, kwargs = _arguments(build, package, seed, dtype)
        if adapters._accepts(cls, "dtype"):
            kwargs.setdefault("dtype", dtype)
        if adapters._accepts(cls, "rng"):
            kwargs.setdefault("rng", np.random.default_rng(seed))
        return cls(*args, **kwargs)
    import torch

    if not reseed:
        args, kwargs = _arguments(build, package, seed, dtype)
        return cls(*args, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        args, kwargs = _arguments(build, package, seed, dtype)
        return cls(*args, **kwargs)


# --- a tower's interaction ----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def keyed_linear_class(package: str) -> Any:
    """KeyedLinear(in_features, out_features): y = kt.values() W^T + b on an EmbeddingBagCollection's
    KeyedTensor, state `linear.weight`, `linear.bias`: the interaction of the tower records, with a
    refimpl backward (a tower's backward runs through it). One class per package."""
    if package == "refimpl":
        from refimpl.base import Module, prefixed
        from refimpl.nn import Linear

        class RefKeyedLinear(Module):
            def __init__(self, in_features: int, out_features: int, *, dtype: Any = np.float64,
                         rng: Optional[np.random.Generator] = None) -> None:
                super().__init__(dtype)
                self.linear = Linear(in_features, out_features, dtype=dtype, rng=rng)
                self.register_module("linear", self.linear)

            def forward(self, kt: Any) -> np.ndarray:
                return self.linear(kt.values())

            def backward(self, grad_output: Any) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
                grad_x, grads = self.linear.backward(grad_output)
                return grad_x, prefixed(grads, "linear.")

        return RefKeyedLinear
    from torch import nn

    class TorchKeyedLinear(nn.Module):
        def __init__(self, in_features: int, out_features: int) -> None:
            super().__init__()
            self.linear = nn.Linear(in_features, out_features)

        def forward(self, kt: Any) -> Any:
            return self.linear(kt.values())

    return TorchKeyedLinear


@dataclass
class Pair:
    build: Build
    ref: Any
    other: Any
    state: Dict[str, np.ndarray]
    dtype: np.dtype
    device: str

    def reference64(self) -> Any:
        module = construct(self.build, "refimpl", dtype=np.float64)
        module.load_state_dict(self.state)
        return module


def make_pair(build: Build, *, seed: int = 0, dtype: Any = np.float64, package: str = "accel", device: str = "cpu",
              state: Optional[Dict[str, np.ndarray]] = None) -> Pair:
    """The torch module and a refimpl module holding the same parameters (float32-rounded once
    when dtype is float32, so that the float64 reference sees the float32 modules' values)."""
    dtype = np.dtype(dtype)
    other = construct(build, package, seed=seed)
    if state is None:
        state = adapters.exercise(adapters.torch_state(other), seed)
    state = {k: np.asarray(v).astype(dtype).astype(np.float64) for k, v in state.items()}
    other = other.to(device=device, dtype=adapters.torch_dtype(dtype))
    adapters.load_torch(other, state)
    ref = construct(build, "refimpl", seed=seed, dtype=dtype)
    ref.load_state_dict(state)
    return Pair(build, ref, other, state, dtype, device)


# --- inputs ----------------------------------------------------------------------------------
def to_kjt(b: Batch, package: str, dtype: Any = np.float64, device: str = "cpu", requires_grad: bool = False) -> Any:
    """The batch as `package`'s KeyedJaggedTensor; weights in `dtype` (a leaf that requires grad
    when asked, for the torch packages)."""
    if package == "refimpl":
        from refimpl.sparse import KeyedJaggedTensor

        w = None if b.weights is None else b.weights.astype(dtype)
        return KeyedJaggedTensor(list(b.keys), b.values.copy(), weights=w, lengths=b.lengths.copy(), stride=b.stride)
    import torch

    if package == "accel":
        from accel.sparse import KeyedJaggedTensor
    else:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    w = None
    if b.weights is not None:
        w = torch.tensor(b.weights, dtype=adapters.torch_dtype(dtype), device=device)
        w.requires_grad_(requires_grad)
    return KeyedJaggedTensor(keys=list(b.keys), values=torch.tensor(b.values, device=device), weights=w,
                             lengths=torch.tensor(b.lengths, device=device), stride=b.stride)


def module_input(build: Build, b: Batch, package: str, dtype: Any = np.float64, device: str = "cpu",
                 requires_grad: bool = False) -> Tuple[Tuple[Any, ...], Any]:
    """(the forward's positional arguments, the weights leaf or None): a KJT; its dict of JTs for
    the dict-taking modules; the same KJT as features and weighted_features for a tower collection."""
    kjt = to_kjt(b, package, dtype, device, requires_grad)
    leaf = kjt.weights_or_none() if package != "refimpl" else None
    if build.module in DICT_MODULES:
        return (kjt.to_dict(),), leaf
    if build.module == "EmbeddingTowerCollection":
        return (kjt, kjt), leaf
    return (kjt,), leaf


# --- outputs ---------------------------------------------------------------------------------
def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        return x.numpy()
    return np.asarray(x)


def outputs(build: Build, result: Any) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """(the output's keys in order, its named arrays in float64 / int64)."""
    module = build.module
    if module == "EmbeddingBagCollection":
        return list(result.keys()), {"out": _np(result.values()).astype(np.float64)}
    if module == "EmbeddingCollection":
        arrays = {}
        for name, jt in result.items():
            arrays[f"values[{name}]"] = _np(jt.values()).astype(np.float64)
            arrays[f"lengths[{name}]"] = _np(jt.lengths()).astype(np.int64)
            if jt.weights_or_none() is not None:
                arrays[f"indices[{name}]"] = _np(jt.weights()).astype(np.int64)
        return list(result), arrays
    if module == "PositionWeightedModule":
        return list(result), {f"weights[{f}]": _np(result[f].weights()).astype(np.float64)
                              for f in dict(build.args[0])}
    if module == "PositionWeightedProcessor":
        return list(result.keys()), {"weights": _np(result.weights()).astype(np.float64)}
    if module in ("EmbeddingTower", "EmbeddingTowerCollection"):
        return [], {"out": _np(result).astype(np.float64)}
    raise ValueError(f"outputs: module expected one of {EMBEDDING_MODULES}, got {module!r}")


def differentiable(arrays: Dict[str, np.ndarray]) -> List[str]:
    """The float outputs a loss reads (ids and lengths have no gradient)."""
    return [k for k in arrays if k == "out" or k.startswith(("values[", "weights"))]


def run(pair_module: Any, build: Build, b: Batch, package: str, dtype: Any, device: str = "cpu"
        ) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """One forward of a module on `b` in `package`, without gradients."""
    if package == "refimpl":
        args, _ = module_input(build, b, package, dtype)
        return outputs(build, pair_module(*args))
    import torch

    with torch.no_grad():
        args, _ = module_input(build, b, package, dtype, device)
        return outputs(build, pair_module(*args))


def cotangents(arrays: Dict[str, np.ndarray], rng: np.random.Generator) -> Dict[str, np.ndarray]:
    return {k: rng.standard_normal(arrays[k].shape) for k in differentiable(arrays)}


def _grad_output(build: Build, G: Dict[str, np.ndarray], names: List[str]) -> Any:
    """G in the form the refimpl module's backward takes."""
    if build.module in ("EmbeddingBagCollection", "EmbeddingTower", "EmbeddingTowerCollection"):
        return G["out"]
    if build.module == "EmbeddingCollection":
        return {n: G[f"values[{n}]"] for n in names}
    if build.module == "PositionWeightedModule":
        return {f: G[f"weights[{f}]"] for f in dict(build.args[0])}
    return G["weights"]


def ref_gradients(module: Any, build: Build, b: Batch, G: Dict[str, np.ndarray]
                  ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """refimpl's outputs and analytic gradients: "grad <state key>", and "grad weights" for a
    weighted lookup."""
    args, _ = module_input(build, b, "refimpl", module.dtype)
    names, arrays = outputs(build, module(*args))
    grad_in, grad_params = module.backward(_grad_output(build, {k: v.astype(module.dtype) for k, v in G.items()},
                                                        names))
    grads = {f"grad {k}": np.asarray(v, dtype=np.float64) for k, v in grad_params.items()}
    if isinstance(grad_in, tuple):  # a tower collection: (features, weighted_features), the same KJT here
        parts = [g for g in grad_in if g is not None]
        grad_in = sum(np.asarray(g, dtype=np.float64) for g in parts) if parts else None
    if grad_in is not None and b.weights is not None:
        grads["grad weights"] = np.asarray(grad_in, dtype=np.float64)
    return arrays, grads


def torch_gradients(module: Any, build: Build, b: Batch, G: Dict[str, np.ndarray], dtype: Any,
                    device: str = "cpu") -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """The torch module's outputs and the autograd gradients of sum_k <output_k, G_k>, named as in
    ref_gradients; a parameter autograd leaves untouched has gradient zero."""
    import torch

    module.zero_grad(set_to_none=True)
    args, leaf = module_input(build, b, adapters_package(module), dtype, device, requires_grad=b.weights is not None)
    result = module(*args)
    tensors = _torch_outputs(build, result)
    loss = sum((tensors[k] * torch.tensor(G[k], dtype=tensors[k].dtype, device=tensors[k].device)).sum()
               for k in G)
    if torch.is_tensor(loss) and loss.requires_grad:
        loss.backward()
    _, arrays = outputs(build, result)
    grads = {f"grad {k}": (np.zeros(tuple(p.shape)) if p.grad is None else _np(p.grad))
             for k, p in module.named_parameters(remove_duplicate=False)}
    if leaf is not None and _reads_weights(module):
        grads["grad weights"] = np.zeros(tuple(leaf.shape)) if leaf.grad is None else _np(leaf.grad)
    return arrays, grads


def _reads_weights(module: Any) -> bool:
    """Whether a weighted EmbeddingBagCollection is (or is inside) the module: only then do the
    KJT's weights get a gradient (refimpl returns None for them otherwise)."""
    return any(callable(getattr(m, "is_weighted", None)) and bool(m.is_weighted()) for m in module.modules())


def adapters_package(module: Any) -> str:
    return "torchrec" if type(module).__module__.startswith("torchrec.") else "accel"


def _torch_outputs(build: Build, result: Any) -> Dict[str, Any]:
    if build.module == "EmbeddingBagCollection":
        return {"out": result.values()}
    if build.module == "EmbeddingCollection":
        return {f"values[{n}]": jt.values() for n, jt in result.items()}
    if build.module == "PositionWeightedModule":
        return {f"weights[{f}]": result[f].weights() for f in dict(build.args[0])}
    if build.module == "PositionWeightedProcessor":
        return {"weights": result.weights()}
    return {"out": result}
