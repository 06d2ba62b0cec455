"""accel: drop-in torch modules for TorchRec's `torchrec.modules`, hot paths on Numba kernels.

Every public class is importable from the package root (`from accel import CrossNet`);
the import happens on first use so that `import accel` does not compile anything.
"""

from importlib import import_module
from typing import Any, Dict

_EXPORTS: Dict[str, str] = {
    # sparse
    "JaggedTensor": "accel.sparse",
    "KeyedJaggedTensor": "accel.sparse",
    "KeyedTensor": "accel.sparse",
    # activation
    "SwishLayerNorm": "accel.modules.activation",
    # crossnet
    "CrossNet": "accel.modules.crossnet",
    "LowRankCrossNet": "accel.modules.crossnet",
    "VectorCrossNet": "accel.modules.crossnet",
    "LowRankMixtureCrossNet": "accel.modules.crossnet",
    # deepfm
    "DeepFM": "accel.modules.deepfm",
    "FactorizationMachine": "accel.modules.deepfm",
    # mlp
    "Perceptron": "accel.modules.mlp",
    "MLP": "accel.modules.mlp",
    # embedding_configs
    "DataType": "accel.modules.embedding_configs",
    "PoolingType": "accel.modules.embedding_configs",
    "ShardingType": "accel.modules.embedding_configs",
    "QuantConfig": "accel.modules.embedding_configs",
    "BaseEmbeddingConfig": "accel.modules.embedding_configs",
    "EmbeddingBagConfig": "accel.modules.embedding_configs",
    "EmbeddingConfig": "accel.modules.embedding_configs",
    "EmbeddingTableConfig": "accel.modules.embedding_configs",
    # embedding_modules
    "EmbeddingBagCollection": "accel.modules.embedding_modules",
    "EmbeddingCollection": "accel.modules.embedding_modules",
    # feature_processor
    "BaseFeatureProcessor": "accel.modules.feature_processor",
    "BaseGroupedFeatureProcessor": "accel.modules.feature_processor",
    "PositionWeightedModule": "accel.modules.feature_processor",
    "PositionWeightedProcessor": "accel.modules.feature_processor",
    # embedding_tower
    "EmbeddingTower": "accel.modules.embedding_tower",
    "EmbeddingTowerCollection": "accel.modules.embedding_tower",
    # mc_modules
    "MCHEvictionPolicyMetadataInfo": "accel.modules.mc_modules",
    "MCHEvictionPolicy": "accel.modules.mc_modules",
    "LFU_EvictionPolicy": "accel.modules.mc_modules",
    "LRU_EvictionPolicy": "accel.modules.mc_modules",
    "DistanceLFU_EvictionPolicy": "accel.modules.mc_modules",
    "ManagedCollisionModule": "accel.modules.mc_modules",
    "MCHManagedCollisionModule": "accel.modules.mc_modules",
    "ManagedCollisionCollection": "accel.modules.mc_modules",
    "apply_mc_method_to_jt_dict": "accel.modules.mc_modules",
    "dynamic_threshold_filter": "accel.modules.mc_modules",
    "average_threshold_filter": "accel.modules.mc_modules",
    "probabilistic_threshold_filter": "accel.modules.mc_modules",
    # mc_embedding_modules
    "BaseManagedCollisionEmbeddingCollection": "accel.modules.mc_embedding_modules",
    "ManagedCollisionEmbeddingBagCollection": "accel.modules.mc_embedding_modules",
    "ManagedCollisionEmbeddingCollection": "accel.modules.mc_embedding_modules",
    # lazy_extension
    "LazyModuleExtensionMixin": "accel.modules.lazy_extension",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'accel' has no attribute '{name}'")


def __dir__() -> list:
    return __all__
