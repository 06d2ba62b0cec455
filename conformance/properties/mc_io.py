"""Managed-collision modules and their inputs as data, built in refimpl, accel or TorchRec.

    Filter, Policy    a threshold filter and an eviction policy (LFU, LRU, DistanceLFU with its
                      decay exponent), resolved to each package's own functions and classes
    MCH               an MCHManagedCollisionModule's constructor arguments (zch_size Z, policy,
                      eviction_interval I, output_global_offset, input hashing)
    Tables            a ManagedCollisionCollection: tables (name, Z, features), one MCH per table,
                      and the order of the module dict; `wrapped` gives the MC embedding
                      collections over the same configs
    Step, Stream      a sequence of calls: forward on a dict of JaggedTensors (MCH) or a
                      KeyedJaggedTensor (the collections), evict(), train(), eval(); `observe`
                      runs one and returns everything it shows as int64 arrays
Observations are plain dicts `name -> np.ndarray` (`None` for an evict() that returns None), so
that two packages' runs compare id for id.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from conformance.properties import embeddings_io as eio

MAX = 2**63 - 1  # the empty-slot sentinel; a reserved id
PACKAGES = ("refimpl", "accel", "torchrec")


# --- package modules -------------------------------------------------------------------------
def mc_modules(package: str) -> Any:
    """`<package>.modules.mc_modules` (the mirror of torchrec.modules.mc_modules)."""
    return _import(package, "mc_modules")


def mc_embedding_modules(package: str) -> Any:
    return _import(package, "mc_embedding_modules")


def _import(package: str, file: str) -> Any:
    if package not in PACKAGES:
        raise ValueError(f"package expected one of {PACKAGES}, got {package!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # FBGEMM's import-time notices
        return importlib.import_module(f"{package}.modules.{file}")


def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy().copy()
    return np.array(x, copy=True)


# --- hash functions (called as f(values, input_hash_size) on NumPy arrays and torch tensors) ---
def mod_hash(values: Any, size: int) -> Any:
    """h(x) = x mod s (floor modulo: negative ids land in [0, s) too)."""
    return values % size


def shifted_hash(values: Any, size: int) -> Any:
    """h(x) = (x mod s) + s: always outside [0, s) (bad input for recspec)."""
    return values % size + size


HASHES: Dict[str, Callable[[Any, int], Any]] = {"mod": mod_hash, "shifted": shifted_hash}


# --- policies --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filter:
    """A threshold filter: ("dynamic", multiplier), ("average", None) or ("probabilistic", p)."""

    kind: str
    param: Optional[float] = None

    def build(self, package: str, seed: int = 0) -> Callable[[Any], Any]:
        mod = mc_modules(package)
        if self.kind == "dynamic":
            return functools.partial(mod.dynamic_threshold_filter, threshold_skew_multiplier=self.param)
        if self.kind == "average":
            return mod.average_threshold_filter
        if self.kind == "probabilistic":
            f = mod.probabilistic_threshold_filter
            if package == "refimpl":  # refimpl draws from an explicit Generator; torch from its global RNG
                return functools.partial(f, per_id_probability=self.param, rng=np.random.default_rng(seed))
            return functools.partial(f, per_id_probability=self.param)
        raise ValueError(f"Filter.kind expected 'dynamic', 'average' or 'probabilistic', got {self.kind!r}")

    def describe(self) -> str:
        return self.kind if self.param is None else f"{self.kind}({self.param:g})"


@dataclass(frozen=True)
class Policy:
    name: str  # "LFU" | "LRU" | "DistanceLFU"
    decay: float = 1.0
    filter: Optional[Filter] = None

    def build(self, package: str, seed: int = 0) -> Any:
        mod = mc_modules(package)
        f = None if self.filter is None else self.filter.build(package, seed)
        if self.name == "LFU":
            return mod.LFU_EvictionPolicy(threshold_filtering_func=f)
        if self.name in ("LRU", "DistanceLFU"):
            return getattr(mod, f"{self.name}_EvictionPolicy")(decay_exponent=self.decay, threshold_filtering_func=f)
        raise ValueError(f"Policy.name expected 'LFU', 'LRU' or 'DistanceLFU', got {self.name!r}")

    @property
    def metadata(self) -> Tuple[str, ...]:
        """The table metadata buffers the policy keeps (sem. 11.2)."""
        return {"LFU": ("counts",), "LRU": ("last_access_iter",),
                "DistanceLFU": ("counts", "last_access_iter")}[self.name]

    def describe(self) -> str:
        text = self.name if self.name == "LFU" else f"{self.name}({self.decay:g})"
        return text if self.filter is None else f"{text}+{self.filter.describe()}"


@dataclass(frozen=True)
class MCH:
    """MCHManagedCollisionModule(zch_size, device, policy, interval, input_hash_size, input_hash_func,
    output_global_offset), with the hash named in HASHES (None: no hashing)."""

    zch_size: int
    policy: Policy = Policy("LFU")
    interval: int = 1
    offset: int = 0
    hash: Optional[str] = None
    hash_size: int = MAX
    name: Optional[str] = None

    def build(self, package: str, device: str = "cpu", seed: int = 0) -> Any:
        cls = mc_modules(package).MCHManagedCollisionModule
        kwargs: Dict[str, Any] = dict(
            zch_size=self.zch_size, eviction_policy=self.policy.build(package, seed),
            eviction_interval=self.interval, input_hash_size=self.hash_size,
            input_hash_func=None if self.hash is None else HASHES[self.hash],
            output_global_offset=self.offset)
        if self.name is not None:
            kwargs["name"] = self.name
        return cls(device=_device(package, device), **kwargs)

    @property
    def miss_id(self) -> int:
        return self.offset + self.zch_size - 1

    def hashed(self, ids: np.ndarray) -> np.ndarray:
        return ids if self.hash is None else np.asarray(HASHES[self.hash](ids, self.hash_size), dtype=np.int64)

    def describe(self) -> str:
        text = f"Z={self.zch_size}, {self.policy.describe()}, I={self.interval}"
        if self.offset:
            text += f", off={self.offset}"
        if self.hash is not None:
            text += f", hash={self.hash} mod {self.hash_size}"
        return text


def _device(package: str, device: str) -> Any:
    if package == "refimpl":
        return device
    import torch

    return torch.device(device)


# --- collections -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    name: str
    rows: int  # num_embeddings == the MCH's zch_size
    features: Tuple[str, ...]
    dim: int = 2


@dataclass(frozen=True)
class Tables:
    """ManagedCollisionCollection(modules, configs): one MCH (policy, interval) per table, the
    module dict in `module_order` (default: the configs' order)."""

    tables: Tuple[Table, ...]
    policy: Policy = Policy("LFU")
    interval: int = 1
    module_order: Tuple[str, ...] = ()
    kind: str = "EmbeddingBagConfig"  # or "EmbeddingConfig"

    def configs(self, package: str) -> List[Any]:
        return [eio.config(eio.table(self.kind, t.name, t.rows, t.dim, t.features), package) for t in self.tables]

    def modules(self, package: str, device: str = "cpu", seed: int = 0) -> Dict[str, Any]:
        order = self.module_order or tuple(t.name for t in self.tables)
        rows = {t.name: t.rows for t in self.tables}
        return {name: MCH(rows[name], self.policy, self.interval, name=name).build(package, device, seed)
                for name in order}

    def build(self, package: str, device: str = "cpu", seed: int = 0, configs: Optional[List[Any]] = None) -> Any:
        cls = mc_modules(package).ManagedCollisionCollection
        return cls(self.modules(package, device, seed), configs if configs is not None else self.configs(package))

    def describe(self) -> str:
        text = "; ".join(f"{t.name}(Z={t.rows}: {','.join(t.features)})" for t in self.tables)
        text += f"; {self.policy.describe()}, I={self.interval}"
        if self.module_order:
            text += f"; module dict order {list(self.module_order)}"
        return text


@dataclass(frozen=True)
class Wrapped:
    """An MC embedding collection over `tables` (its kind picks EBC or EC)."""

    tables: Tables

    def describe(self) -> str:
        which = "MC-EBC" if self.tables.kind == "EmbeddingBagConfig" else "MC-EC"
        return f"{which} over {self.tables.describe()}"


def wrapped(tables: Tables, package: str, device: str = "cpu", seed: int = 0, **options: Any) -> Any:
    """ManagedCollisionEmbeddingBagCollection (EmbeddingBagConfig tables) or
    ManagedCollisionEmbeddingCollection (EmbeddingConfig) over tables.configs, built under
    torch.manual_seed(seed) for the torch packages (refimpl: rng=default_rng(seed)), returning
    the remapped features; `options` go to the wrapper (reinitialize_evicted_rows=False)."""
    bags = tables.kind == "EmbeddingBagConfig"
    emb_name = "EmbeddingBagCollection" if bags else "EmbeddingCollection"
    wrapper = getattr(mc_embedding_modules(package),
                      "ManagedCollisionEmbeddingBagCollection" if bags else "ManagedCollisionEmbeddingCollection")

    def make() -> Any:
        configs = tables.configs(package)
        emb_cls = eio.adapters.module_class(package, emb_name) if package != "refimpl" else None
        if package == "refimpl":
            import refimpl.modules.embedding_modules as em

            emb = getattr(em, emb_name)(configs, rng=np.random.default_rng(seed))
        else:
            emb = emb_cls(configs, device=_device(package, device))
        mcc = tables.build(package, device, seed, configs)
        return wrapper(emb, mcc, return_remapped_features=True, **options)

    if package == "refimpl":
        return make()
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


# --- inputs ----------------------------------------------------------------------------------
Features = Tuple[Tuple[str, Tuple[int, ...], Tuple[int, ...]], ...]  # (key, ids, lengths) per JT


@dataclass(frozen=True, eq=False)
class Step:
    """One call: op "forward" (features: a dict of JTs for an MCH; batch: a KJT for a collection),
    "evict", "train", "eval", or "remap" (the MCH's pure lookup)."""

    op: str
    features: Features = ()
    batch: Optional[eio.Batch] = None
    dtype: str = "int64"  # the ids' dtype (bad-input cases send int32 / float)

    def describe(self) -> str:
        if self.batch is not None:
            b = self.batch
            return f"{self.op}(KJT keys={list(b.keys)}, lengths={b.lengths.tolist()}, values={b.values.tolist()})"
        if self.features:
            parts = ", ".join(f"{k}: {list(ids)}" + (f" lengths {list(ls)}" if len(ls) != 1 else "")
                              for k, ids, ls in self.features)
            return f"{self.op}({{{parts}}})" + ("" if self.dtype == "int64" else f" as {self.dtype}")
        return f"{self.op}()"

    def ids(self) -> np.ndarray:
        """Every id of the step in profile order (JT by JT, sem. 11.3 profile step 4)."""
        if self.batch is not None:
            return self.batch.values
        parts = [np.asarray(ids, dtype=np.int64) for _, ids, _ in self.features]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def forward(ids: Sequence[int], lengths: Optional[Sequence[int]] = None, key: str = "t", dtype: str = "int64") -> Step:
    """A forward on {key: JT(ids, lengths)} (one bag holding every id unless lengths say otherwise)."""
    ls = (len(ids),) if lengths is None else tuple(int(n) for n in lengths)
    return Step("forward", ((key, tuple(int(i) for i in ids), ls),), dtype=dtype)


def forward_dict(features: Dict[str, Sequence[int]]) -> Step:
    return Step("forward", tuple((k, tuple(int(i) for i in v), (len(v),)) for k, v in features.items()))


def forward_kjt(batch: eio.Batch) -> Step:
    return Step("forward", batch=batch)


EVICT, TRAIN, EVAL = Step("evict"), Step("train"), Step("eval")


@dataclass(frozen=True, eq=False)
class Stream:
    """Named steps on one construction (an MCH, or Tables for the collections)."""

    name: str
    module: Any  # MCH | Tables
    steps: Tuple[Step, ...]
    preset: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()  # state_dict entries loaded before the first step

    def describe(self) -> str:
        steps = "; ".join(s.describe() for s in self.steps)
        return f"{self.name} [{self.module.describe()}]: {steps}"


def jagged(package: str, ids: Sequence[int], lengths: Sequence[int], device: str = "cpu", dtype: str = "int64") -> Any:
    values = np.asarray(ids, dtype=np.int64).astype(dtype)
    lens = np.asarray(lengths, dtype=np.int64)
    if package == "refimpl":
        from refimpl.sparse import JaggedTensor

        return JaggedTensor(values=values, lengths=lens)
    import torch

    if package == "accel":
        from accel.sparse import JaggedTensor
    else:
        from torchrec.sparse.jagged_tensor import JaggedTensor
    return JaggedTensor(values=torch.tensor(values, device=device), lengths=torch.tensor(lens, device=device))


def step_input(step: Step, package: str, device: str = "cpu") -> Any:
    """The step's forward argument: a dict of JTs, or a KJT."""
    if step.batch is not None:
        # float32 weights everywhere: TorchRec's dtype, passed through unchanged by every package
        return eio.to_kjt(step.batch, package, np.float32, device)
    return {k: jagged(package, ids, ls, device, step.dtype) for k, ids, ls in step.features}


# --- running and observing ---------------------------------------------------------------------
Observation = Dict[str, Optional[np.ndarray]]


def state_of(module: Any) -> Dict[str, np.ndarray]:
    return {k: to_numpy(v) for k, v in module.state_dict().items()}


def preset(module: Any, entries: Sequence[Tuple[str, Sequence[int]]], package: str) -> None:
    """Overwrite some state_dict entries (TorchRec's tests pre-seed tables this way) and load it."""
    state = state_of(module)
    for key, values in entries:
        state[key] = np.asarray(values, dtype=np.int64)
    if package == "refimpl":
        module.load_state_dict(state)
    else:
        import torch

        module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})


def _jt_arrays(name: str, jt: Any) -> Observation:
    return {f"values[{name}]": to_numpy(jt.values()), f"lengths[{name}]": to_numpy(jt.lengths())}


def _kjt_arrays(prefix: str, kjt: Any) -> Observation:
    out: Observation = {f"{prefix}keys": np.asarray(list(kjt.keys()))}
    out[f"{prefix}values"] = to_numpy(kjt.values())
    out[f"{prefix}lengths"] = to_numpy(kjt.lengths())
    if kjt.weights_or_none() is not None:
        out[f"{prefix}weights"] = to_numpy(kjt.weights_or_none())
    return out


def _open_slots(module: Any) -> Observation:
    slots = module.open_slots()
    if isinstance(slots, dict):
        return {f"open_slots[{k}]": to_numpy(v) for k, v in slots.items()}
    return {"open_slots": to_numpy(slots)}


def _evict_result(result: Any) -> Observation:
    if isinstance(result, dict):
        return {f"evict[{k}]": None if v is None else to_numpy(v) for k, v in result.items()}
    return {"evict": None if result is None else to_numpy(result)}


def _forward_result(result: Any) -> Observation:
    if isinstance(result, dict):  # an MCH: dict of JTs
        out: Observation = {}
        for k, jt in result.items():
            out.update(_jt_arrays(k, jt))
        return out
    if isinstance(result, tuple):  # an MC embedding collection: (embeddings, remapped KJT)
        emb, remapped = result
        out = _kjt_arrays("remapped ", remapped)
        if isinstance(emb, dict):
            for k, jt in emb.items():
                out[f"embeddings[{k}]"] = to_numpy(jt.values()).astype(np.float64)
        else:
            out["embeddings"] = to_numpy(emb.values()).astype(np.float64)
        return out
    return _kjt_arrays("", result)  # a collection: KJT


def observe(module: Any, step: Step, package: str, device: str = "cpu") -> Observation:
    """Run `step` on `module`; what it returned, then every state_dict entry and open_slots()."""
    out: Observation = {}
    if step.op == "forward":
        out.update(_forward_result(module(step_input(step, package, device))))
    elif step.op == "remap":
        out.update(_forward_result(module.remap(step_input(step, package, device))))
    elif step.op == "evict":
        out.update(_evict_result(module.evict()))
    elif step.op == "train":
        module.train()
    elif step.op == "eval":
        module.eval()
    else:
        raise ValueError(f"Step.op expected forward, remap, evict, train or eval, got {step.op!r}")
    out.update({f"state {k}": v for k, v in state_of(module).items()})
    if hasattr(module, "open_slots"):
        out.update(_open_slots(module))
    return out


def build(stream: Stream, package: str, device: str = "cpu", seed: int = 0) -> Any:
    """The stream's module in `package`, in training mode, with its preset state loaded."""
    if isinstance(stream.module, Wrapped):
        module = wrapped(stream.module.tables, package, device, seed)
    else:  # an MCH or Tables
        module = stream.module.build(package, device, seed)
    if stream.preset:
        preset(module, stream.preset, package)
    module.train()
    return module


@contextlib.contextmanager
def running(package: str, seed: int = 0) -> Iterator[None]:
    """For the torch packages: torch's global RNG forked and seeded (TorchRec's probabilistic
    filter draws from it), no autograd."""
    if package == "refimpl":
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        yield


def run(stream: Stream, package: str, device: str = "cpu", seed: int = 0,
        module: Any = None) -> Tuple[Any, List[Observation]]:
    """The module (built from the stream unless given) and one observation per step."""
    with running(package, seed):
        module = module if module is not None else build(stream, package, device, seed)
        return module, [observe(module, s, package, device) for s in stream.steps]


def first_difference(got: Sequence[Observation], ref: Sequence[Observation], steps: Sequence[Step],
                     skip: Callable[[str], bool] = lambda name: False, start: int = 0) -> str:
    """'' when both runs showed the same arrays after every step, else where they first differ
    (steps numbered from `start`)."""
    for i, (g, r) in enumerate(zip(got, ref)):
        where = f"step {start + i} {steps[i].describe()}"
        names = sorted(n for n in set(g) | set(r) if not skip(n))
        for name in names:
            if name not in g or name not in r:
                side = "the package under test" if name not in g else "refimpl"
                return f"{where}: {name} missing from {side}"
            a, b = g[name], r[name]
            if a is None or b is None:
                if (a is None) != (b is None):
                    return f"{where}: {name} is {_show(a)}, refimpl {_show(b)}"
                continue
            if a.shape != b.shape or a.dtype.kind != b.dtype.kind or not np.array_equal(a, b):
                return f"{where}: {name} is {_show(a)}, refimpl {_show(b)}"
    if len(got) != len(ref):
        return f"{len(got)} observations, refimpl {len(ref)}"
    return ""


def _show(a: Optional[np.ndarray]) -> str:
    if a is None:
        return "None"
    text = np.array2string(a, threshold=24, max_line_width=200)
    return f"{text} ({a.dtype})"


def with_steps(stream: Stream, steps: Sequence[Step], name: str = "") -> Stream:
    return replace(stream, steps=tuple(steps), name=name or stream.name)

