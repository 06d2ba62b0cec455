"""accel <-> TorchRec 1.8: hand a model to TorchRec's sharding engine and take it back.

    to_torchrec(obj)   accel -> TorchRec        from_torchrec(obj)   TorchRec -> accel

Both accept the sparse types (delegated to `accel.sparse`), embedding configs, every module with a
counterpart (SwishLayerNorm, Perceptron, MLP, CrossNet, LowRankCrossNet, VectorCrossNet,
LowRankMixtureCrossNet, FactorizationMachine, DeepFM, EmbeddingBagCollection, EmbeddingCollection,
PositionWeightedModule, PositionWeightedProcessor, EmbeddingTower, EmbeddingTowerCollection) and
any other nn.Module (a user's model), which comes back as a deep copy with every convertible
submodule replaced by its counterpart. Only those exact classes convert: a subclass may change
the behaviour, so it is copied as a container and its own children are converted.

Copies and sharing:
- sparse types share their tensors (no copy);
- modules never share memory with their source: parameters and buffers are copied, keeping
  dtype, device and requires_grad, so the state_dicts are equal key for key. Parameters tied
  inside the source stay tied in the copy, and a module reached twice is converted once;
- `device="meta"` gives the structure only (nothing copied): the form DistributedModelParallel
  shards, after which `load_state_dict(source.state_dict())` fills the shards.
Building a counterpart never draws from torch's random generators.

Refused rather than changed (ValueError naming the table): BF16 tables (TorchRec stores them as
float16, accel as bfloat16; either way the weights would be rounded), weighted MEAN pooling
(TorchRec has none), and a collection in fused-optimizer mode unless `drop_optimizer_state=True`
(TorchRec's unsharded collections have no fused optimizer: the update rule and the accumulators
are not carried; `sharder_fused_params` gives the sharder the same rule).

TorchRec is imported on first use; without it these functions raise ImportError naming
scripts/install-torchrec.sh. `gather_state_dict` needs only torch.distributed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from accel import sparse as accel_sparse
from accel.modules import activation, crossnet, deepfm, embedding_configs, embedding_modules, embedding_tower
from accel.modules import feature_processor, mlp
from refimpl import sparse as refimpl_sparse
from refimpl.modules.embedding_configs import as_enum

__all__ = ["from_torchrec", "gather_state_dict", "sharder_fused_params", "to_torchrec"]

_TORCHREC_MISSING = (
    "{what} needs TorchRec, which is not installed; install it beside recspec with "
    "scripts/install-torchrec.sh"
)
DeviceLike = Optional[Union[str, torch.device]]
# accel fused optimizer -> FBGEMM's EmbOptimType member of the same update rule.
_FBGEMM_OPTIMIZERS = {"sgd": "EXACT_SGD", "adagrad": "EXACT_ADAGRAD", "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD"}


def _torchrec(what: str) -> types.SimpleNamespace:
    """TorchRec's module files, imported on first use."""
    try:
        from torchrec.modules import activation as t_activation
        from torchrec.modules import crossnet as t_crossnet
        from torchrec.modules import deepfm as t_deepfm
        from torchrec.modules import embedding_configs as t_configs
        from torchrec.modules import embedding_modules as t_modules
        from torchrec.modules import embedding_tower as t_tower
        from torchrec.modules import feature_processor as t_fp
        from torchrec.modules import mlp as t_mlp
        from torchrec.sparse import jagged_tensor as t_sparse
    except ImportError as error:
        raise ImportError(_TORCHREC_MISSING.format(what=what)) from error
    return types.SimpleNamespace(
        activation=t_activation, crossnet=t_crossnet, deepfm=t_deepfm, configs=t_configs, modules=t_modules,
        tower=t_tower, fp=t_fp, mlp=t_mlp, sparse=t_sparse,
    )


# --- constructor arguments, read from a module of either library -------------------------------------
# Each reader returns (args, kwargs) for the counterpart's constructor; `convert` converts a child.
Convert = Callable[[Any], Any]
ArgsReader = Callable[[nn.Module, Convert], Tuple[tuple, dict]]


def _in_features(module: nn.Module, first: str) -> int:
    kernels = getattr(module, first)
    if len(kernels) > 0:
        return int(kernels[0].shape[0])
    if hasattr(module, "_in_features"):
        return int(module._in_features)
    raise ValueError(
        f"{type(module).__name__}: in_features expected to be readable from its kernels, got a net with "
        "num_layers=0 (no kernels) and no recorded in_features"
    )


def _callable(fn: Any, convert: Convert) -> Any:
    """A module (an activation, a tower's interaction) is converted; a plain function is used as is."""
    return convert(fn) if isinstance(fn, nn.Module) else fn


def _swish_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    return (list(m.norm[0].normalized_shape),), {}


def _perceptron_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    linear = m._linear
    return (linear.in_features, linear.out_features), {
        "bias": linear.bias is not None,
        "activation": _callable(m._activation_fn, convert),
    }


def _mlp_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    # Built empty; the converted layers are put in by _finish_mlp (each keeps its own activation).
    in_size = m._mlp[0]._linear.in_features if len(m._mlp) else 0
    return (in_size, []), {}


def _finish_mlp(out: nn.Module, m: nn.Module, convert: Convert) -> None:
    out._mlp = nn.Sequential(*[convert(layer) for layer in m._mlp])


def _crossnet_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    return (_in_features(m, "kernels"), m._num_layers), {}


def _low_rank_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    return (_in_features(m, "W_kernels"), m._num_layers, m._low_rank), {}


def _mixture_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    args = (m._in_features, m._num_layers, m._num_experts, m._low_rank)
    return args, {"activation": _callable(m._activation, convert)}


def _no_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    return (), {}


def _deepfm_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    return (convert(m.dense_module),), {}


def _position_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    return (dict(m.max_feature_lengths),), {}


def _tower_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    return (_callable(m.embedding, convert), _callable(m.interaction, convert)), {}


def _towers_args(m: nn.Module, convert: Convert) -> Tuple[tuple, dict]:
    return ([convert(tower) for tower in m.towers],), {}


def _dense_pairs(trec: types.SimpleNamespace) -> List[Tuple[type, type, ArgsReader, Optional[Callable]]]:
    """(accel class, TorchRec class, constructor-argument reader, finishing step or None)."""
    return [
        (activation.SwishLayerNorm, trec.activation.SwishLayerNorm, _swish_args, None),
        (mlp.Perceptron, trec.mlp.Perceptron, _perceptron_args, None),
        (mlp.MLP, trec.mlp.MLP, _mlp_args, _finish_mlp),
        (crossnet.CrossNet, trec.crossnet.CrossNet, _crossnet_args, None),
        (crossnet.LowRankCrossNet, trec.crossnet.LowRankCrossNet, _low_rank_args, None),
        (crossnet.VectorCrossNet, trec.crossnet.VectorCrossNet, _crossnet_args, None),
        (crossnet.LowRankMixtureCrossNet, trec.crossnet.LowRankMixtureCrossNet, _mixture_args, None),
        (deepfm.FactorizationMachine, trec.deepfm.FactorizationMachine, _no_args, None),
        (deepfm.DeepFM, trec.deepfm.DeepFM, _deepfm_args, None),
        (feature_processor.PositionWeightedModule, trec.fp.PositionWeightedModule, _position_args, None),
        (feature_processor.PositionWeightedProcessor, trec.fp.PositionWeightedProcessor, _position_args, None),
        (embedding_tower.EmbeddingTower, trec.tower.EmbeddingTower, _tower_args, None),
        (embedding_tower.EmbeddingTowerCollection, trec.tower.EmbeddingTowerCollection, _towers_args, None),
    ]


# --- embedding configs ---------------------------------------------------------------------------------


def _enum_name(member: Any) -> str:
    return str(getattr(member, "value", member))


def _config_to(config: Any, target: type, enums: Dict[str, Any]) -> Any:
    """The same table in `target`'s config class: every field carried, enums by value."""
    values = {}
    for field in dataclasses.fields(target):
        value = getattr(config, field.name)
        if field.name in enums:
            value = enums[field.name](value)
        elif isinstance(value, list):
            value = list(value)
        values[field.name] = value
    return target(**values)


def _configs_to_torchrec(configs: List[Any], trec: types.SimpleNamespace) -> List[Any]:
    enums = {
        "data_type": lambda v: trec.configs.DataType(_enum_name(v)),
        "pooling": lambda v: trec.configs.PoolingType(_enum_name(v)),
    }
    out = []
    for config in configs:
        kind = {
            embedding_configs.EmbeddingBagConfig: trec.configs.EmbeddingBagConfig,
            embedding_configs.EmbeddingConfig: trec.configs.EmbeddingConfig,
            embedding_configs.EmbeddingTableConfig: trec.configs.EmbeddingTableConfig,
        }[type(config)]
        out.append(_config_to(config, kind, enums))
    return out


def _configs_from_torchrec(configs: List[Any], trec: types.SimpleNamespace) -> List[Any]:
    enums = {
        "data_type": lambda v: as_enum(embedding_configs.DataType, v, "data_type"),
        "pooling": lambda v: as_enum(embedding_configs.PoolingType, v, "pooling"),
    }
    out = []
    for config in configs:
        kind = {
            trec.configs.EmbeddingBagConfig: embedding_configs.EmbeddingBagConfig,
            trec.configs.EmbeddingConfig: embedding_configs.EmbeddingConfig,
            trec.configs.EmbeddingTableConfig: embedding_configs.EmbeddingTableConfig,
        }[type(config)]
        converted = _config_to(config, kind, enums)
        if _is_default_init(config.init_fn, converted):
            converted.init_fn = None  # recspec's spelling of the same default (D12)
        out.append(converted)
    return out


def _is_default_init(init_fn: Any, config: Any) -> bool:
    """TorchRec's config fills init_fn with U(min, max) of its bounds when none is given."""
    return (
        isinstance(init_fn, functools.partial)
        and init_fn.func is torch.nn.init.uniform_
        and not init_fn.args
        and init_fn.keywords == {"a": config.get_weight_init_min(), "b": config.get_weight_init_max()}
    )


# --- embedding collections: what TorchRec cannot represent ------------------------------------------


def _refuse_bf16(who: str, configs: List[Any], direction: str) -> None:
    for config in configs:
        if _enum_name(config.data_type) == "BF16":
            held = "bfloat16 here" if direction == "to_torchrec" else "float16 in TorchRec"
            becomes = "float16 in TorchRec" if direction == "to_torchrec" else "bfloat16 in accel"
            raise ValueError(
                f"{direction}: {who} table '{config.name}': data_type expected a type both libraries store alike "
                f"(FP32, FP16, ...), got BF16, held as {held} and stored as {becomes}, which would round every "
                "weight; set the table's data_type to FP16 or FP32 and convert its weight first"
            )


def _refuse_fused(who: str, module: nn.Module, drop_optimizer_state: bool) -> None:
    fused = module._fused
    if fused is None or drop_optimizer_state:
        return
    state = sorted(module.optimizer_state())
    kept = (
        f"the accumulators (momentum1) of tables {state} would be discarded"
        if state
        else "SGD keeps no state, but the update rule would not travel with the tables"
    )
    raise ValueError(
        f"to_torchrec: {who} optimizer expected None (TorchRec's unsharded collections have no fused optimizer), "
        f"got fused {fused.name!r} (lr={fused.lr}, eps={fused.eps}): {kept}. Pass drop_optimizer_state=True to "
        "convert the tables alone, and give the sharder sharder_fused_params(module) to train them by the same rule"
    )


def _ebc_args_to(m: nn.Module, trec: types.SimpleNamespace, drop: bool, device: torch.device) -> Tuple[tuple, dict]:
    who = "EmbeddingBagCollection"
    configs = m.embedding_bag_configs()
    _refuse_bf16(who, configs, "to_torchrec")
    if m.is_weighted():
        for config in configs:
            if _enum_name(config.pooling) == "MEAN":
                raise ValueError(
                    f"to_torchrec: {who} table '{config.name}': pooling expected SUM in a weighted collection "
                    "(TorchRec has no weighted MEAN), got MEAN"
                )
    _refuse_fused(who, m, drop)
    return (_configs_to_torchrec(configs, trec),), {"is_weighted": m.is_weighted(), "device": device}


def _ec_args_to(m: nn.Module, trec: types.SimpleNamespace, drop: bool, device: torch.device) -> Tuple[tuple, dict]:
    who = "EmbeddingCollection"
    configs = m.embedding_configs()
    _refuse_bf16(who, configs, "to_torchrec")
    _refuse_fused(who, m, drop)
    return (_configs_to_torchrec(configs, trec),), _ec_kwargs(m, device)


def _ec_kwargs(m: nn.Module, device: torch.device) -> dict:
    return {
        "device": device,
        "need_indices": m.need_indices(),
        "use_gather_select": m.use_gather_select(),
        "use_gather_select_per_sharding": m.use_gather_select_per_sharding(),
    }


def _ebc_args_from(m: nn.Module, trec: types.SimpleNamespace, drop: bool, device: torch.device) -> Tuple[tuple, dict]:
    configs = m.embedding_bag_configs()
    _refuse_bf16("EmbeddingBagCollection", configs, "from_torchrec")
    return (_configs_from_torchrec(configs, trec),), {"is_weighted": m.is_weighted(), "device": device}


def _ec_args_from(m: nn.Module, trec: types.SimpleNamespace, drop: bool, device: torch.device) -> Tuple[tuple, dict]:
    configs = m.embedding_configs()
    _refuse_bf16("EmbeddingCollection", configs, "from_torchrec")
    return (_configs_from_torchrec(configs, trec),), _ec_kwargs(m, device)


# --- the converter -------------------------------------------------------------------------------------


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


class _Converter:
    """One conversion: the class table of its direction and a memo shared by every module and tensor,
    so that what the source shares (a module reached twice, tied parameters) the result shares too.
    The memo doubles as copy.deepcopy's, which copies everything that does not convert."""

    def __init__(self, to_trec: bool, device: DeviceLike, drop_optimizer_state: bool) -> None:
        self.trec = _torchrec("to_torchrec" if to_trec else "from_torchrec")
        self.device = torch.device(device) if device is not None else None
        self.drop = drop_optimizer_state
        self.memo: Dict[int, Any] = {}
        self.dense: Dict[type, Tuple[type, ArgsReader, Optional[Callable]]] = {}
        for ours, theirs, reader, finish in _dense_pairs(self.trec):
            source, target = (ours, theirs) if to_trec else (theirs, ours)
            self.dense[source] = (target, reader, finish)
        t = self.trec.modules
        if to_trec:
            self.collections = {
                embedding_modules.EmbeddingBagCollection: (t.EmbeddingBagCollection, _ebc_args_to),
                embedding_modules.EmbeddingCollection: (t.EmbeddingCollection, _ec_args_to),
            }
        else:
            self.collections = {
                t.EmbeddingBagCollection: (embedding_modules.EmbeddingBagCollection, _ebc_args_from),
                t.EmbeddingCollection: (embedding_modules.EmbeddingCollection, _ec_args_from),
            }

    def convertible(self, module: nn.Module) -> bool:
        return type(module) in self.dense or type(module) in self.collections

    def __call__(self, module: nn.Module) -> nn.Module:
        if id(module) in self.memo:
            return self.memo[id(module)]
        if self.convertible(module):
            out = self._counterpart(module)
        else:
            out = self._container(module)
        self.memo[id(module)] = out
        return out

    def _counterpart(self, module: nn.Module) -> nn.Module:
        device = self.device if self.device is not None else _module_device(module)
        kind = type(module)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if kind in self.collections:
                target, reader = self.collections[kind]
                args, kwargs = reader(module, self.trec, self.drop, device)
                # Built where it will live: the collections record their device.
                out = target(*args, **kwargs)
            else:
                target, reader, finish = self.dense[kind]
                args, kwargs = reader(module, self)
                with torch.device("meta"):
                    out = target(*args, **kwargs)
                if finish is not None:
                    finish(out, module, self)
        self._carry_state(module, out, device)
        out.train(module.training)
        return out

    def _tensor(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A copy of `tensor` on `device` (a Parameter stays a Parameter), once per source tensor."""
        if id(tensor) not in self.memo:
            copied = tensor.detach().to(device, copy=True)
            if isinstance(tensor, nn.Parameter):
                copied = nn.Parameter(copied, requires_grad=tensor.requires_grad)
            self.memo[id(tensor)] = copied
        return self.memo[id(tensor)]

    def _carry_state(self, module: nn.Module, out: nn.Module, device: torch.device) -> None:
        source = module.state_dict(keep_vars=True)
        assert list(source) == list(out.state_dict()), (type(module).__name__, list(source), list(out.state_dict()))
        if device.type == "meta":
            out.to(device)
            return
        # assign=True: the copies become the parameters (so ties survive), with their dtype and device.
        out.load_state_dict({k: self._tensor(v, device) for k, v in source.items()}, strict=True, assign=True)
        stray = [n for n, t in list(out.named_parameters()) + list(out.named_buffers()) if t.device.type == "meta"]
        assert not stray, (type(out).__name__, stray)

    def _container(self, module: nn.Module) -> nn.Module:
        """A deep copy of `module` in which every convertible descendant is its counterpart."""
        self._convert_descendants(module)
        out = copy.deepcopy(module, self.memo)
        if self.device is not None:
            out.to(self.device)
        return out

    def _convert_descendants(self, module: nn.Module) -> None:
        for child in module.children():
            if id(child) in self.memo:
                continue
            if self.convertible(child):
                self(child)
            else:
                self._convert_descendants(child)


# --- public functions ----------------------------------------------------------------------------------


def to_torchrec(obj: Any, *, device: DeviceLike = None, drop_optimizer_state: bool = False) -> Any:
    """accel -> TorchRec: sparse types (same tensors), configs, modules and models (copies; module docstring).

    device (modules only): None keeps each module's device; "meta" gives the structure only, for
    DistributedModelParallel; any other device copies the state there.
    drop_optimizer_state: convert a collection in fused-optimizer mode, discarding its update rule
    and accumulators (otherwise a ValueError says what would be lost).
    """
    return _convert(obj, True, device, drop_optimizer_state)


def from_torchrec(obj: Any, *, device: DeviceLike = None) -> Any:
    """TorchRec -> accel: sparse types (same tensors, validated), configs, modules and models (copies).

    device: as for to_torchrec. The accel collections come back without a fused optimizer.
    """
    return _convert(obj, False, device, False)


def _convert(obj: Any, to_trec: bool, device: DeviceLike, drop_optimizer_state: bool) -> Any:
    what = "to_torchrec" if to_trec else "from_torchrec"
    trec = _torchrec(what)
    if isinstance(obj, nn.Module):
        return _Converter(to_trec, device, drop_optimizer_state)(obj)
    if device is not None:
        raise ValueError(
            f"{what}: device expected None for a {type(obj).__name__} (sparse types keep their tensors, configs "
            f"hold none; move a KJT with .to()), got {device!r}"
        )
    if to_trec:
        if isinstance(obj, list) and obj and all(_is_config(c, embedding_configs) for c in obj):
            return _configs_to_torchrec(obj, trec)
        if _is_config(obj, embedding_configs):
            return _configs_to_torchrec([obj], trec)[0]
        if isinstance(obj, _SPARSE_TYPES):
            return accel_sparse.to_torchrec(obj)
        expected = "an accel module or model, an embedding config (or list of them), or an accel/refimpl sparse type"
    else:
        if isinstance(obj, list) and obj and all(_is_config(c, trec.configs) for c in obj):
            return _configs_from_torchrec(obj, trec)
        if _is_config(obj, trec.configs):
            return _configs_from_torchrec([obj], trec)[0]
        t = trec.sparse
        if isinstance(obj, (t.JaggedTensor, t.KeyedJaggedTensor, t.KeyedTensor)):
            return accel_sparse.from_torchrec(obj)
        expected = "a TorchRec module or model, embedding config (or list of them), or sparse type"
    raise TypeError(f"{what}: obj expected {expected}, got {type(obj).__name__}")


_SPARSE_TYPES = (
    accel_sparse.JaggedTensor, accel_sparse.KeyedJaggedTensor, accel_sparse.KeyedTensor,
    refimpl_sparse.JaggedTensor, refimpl_sparse.KeyedJaggedTensor, refimpl_sparse.KeyedTensor,
)


def _is_config(obj: Any, configs: Any) -> bool:
    return type(obj) in (configs.EmbeddingBagConfig, configs.EmbeddingConfig, configs.EmbeddingTableConfig)


def sharder_fused_params(module: nn.Module) -> Dict[str, Any]:
    """accel fused optimizer -> TorchRec sharder's fused_params: sgd -> EXACT_SGD, adagrad -> EXACT_ADAGRAD,
    rowwise_adagrad -> EXACT_ROWWISE_ADAGRAD, with the same learning_rate (and eps for the Adagrads).

    module: an accel collection in fused-optimizer mode, or a model whose fused collections all
    share one rule (EmbeddingBagCollectionSharder(fused_params=...) takes one rule per sharder);
    collections without a fused optimizer are not consulted.
    """
    fused = {
        name or "(the module itself)": sub._fused
        for name, sub in module.named_modules()
        if type(sub) in (embedding_modules.EmbeddingBagCollection, embedding_modules.EmbeddingCollection)
        and sub._fused is not None
    }
    rules = set(fused.values())
    if len(rules) != 1:
        raise ValueError(
            "sharder_fused_params: module expected accel collections in fused-optimizer mode sharing one rule, "
            f"got {fused or 'none in fused mode'}"
        )
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
    except ImportError as error:
        raise ImportError(_TORCHREC_MISSING.format(what="sharder_fused_params")) from error
    rule = rules.pop()
    params: Dict[str, Any] = {
        "optimizer": getattr(EmbOptimType, _FBGEMM_OPTIMIZERS[rule.name]),
        "learning_rate": rule.lr,
    }
    if rule.name != "sgd":
        params["eps"] = rule.eps
    return params


def gather_state_dict(module: nn.Module, group: Any = None) -> Dict[str, torch.Tensor]:
    """The unsharded state_dict of a sharded model, on every rank: ShardedTensor and DTensor entries become
    whole tensors (gathered bit for bit), plain tensors are copied. Collective: every rank of `group`
    (default: the world) calls it. The result loads into the unsharded model, accel's or TorchRec's."""
    import torch.distributed as dist
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor

    source = 0 if group is None else dist.get_global_rank(group, 0)
    out: Dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype, device=_shard_device(value))
            value.gather(dst=0, out=full if dist.get_rank(group) == 0 else None)
            dist.broadcast(full, src=source, group=group)
            out[key] = full
        elif isinstance(value, DTensor):
            out[key] = value.full_tensor()
        else:
            out[key] = value.detach().clone()
    return out


def _shard_device(value: Any) -> torch.device:
    shards = value.local_shards()
    return shards[0].tensor.device if shards else torch.device("cpu")
