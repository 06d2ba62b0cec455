"""refimpl: TorchRec's modules as plain NumPy formulas, float64-exact, with analytic gradients.

Every public class is importable from the package root (`from refimpl import CrossNet`);
the import happens on first use so that `import refimpl` stays cheap.
"""

from importlib import import_module
from typing import Any, Dict

_EXPORTS: Dict[str, str] = {
    # sparse
    "JaggedTensor": "refimpl.sparse",
    "KeyedJaggedTensor": "refimpl.sparse",
    "KeyedTensor": "refimpl.sparse",
    # nn
    "Linear": "refimpl.nn",
    # activation
    "SwishLayerNorm": "refimpl.modules.activation",
    # crossnet
    "CrossNet": "refimpl.modules.crossnet",
    "LowRankCrossNet": "refimpl.modules.crossnet",
    "VectorCrossNet": "refimpl.modules.crossnet",
    "LowRankMixtureCrossNet": "refimpl.modules.crossnet",
    # deepfm
    "DeepFM": "refimpl.modules.deepfm",
    "FactorizationMachine": "refimpl.modules.deepfm",
    # mlp
    "Perceptron": "refimpl.modules.mlp",
    "MLP": "refimpl.modules.mlp",
    # embedding_configs
    "DataType": "refimpl.modules.embedding_configs",
    "PoolingType": "refimpl.modules.embedding_configs",
    "ShardingType": "refimpl.modules.embedding_configs",
    "QuantConfig": "refimpl.modules.embedding_configs",
    "BaseEmbeddingConfig": "refimpl.modules.embedding_configs",
    "EmbeddingBagConfig": "refimpl.modules.embedding_configs",
    "EmbeddingConfig": "refimpl.modules.embedding_configs",
    "EmbeddingTableConfig": "refimpl.modules.embedding_configs",
    # embedding_modules
    "EmbeddingBagCollection": "refimpl.modules.embedding_modules",
    "EmbeddingCollection": "refimpl.modules.embedding_modules",
    # feature_processor
    "BaseFeatureProcessor": "refimpl.modules.feature_processor",
    "BaseGroupedFeatureProcessor": "refimpl.modules.feature_processor",
    "PositionWeightedModule": "refimpl.modules.feature_processor",
    "PositionWeightedProcessor": "refimpl.modules.feature_processor",
    # mc_modules
    "ManagedCollisionModule": "refimpl.modules.mc_modules",
    "MCHManagedCollisionModule": "refimpl.modules.mc_modules",
    "ManagedCollisionCollection": "refimpl.modules.mc_modules",
    "MCHEvictionPolicyMetadataInfo": "refimpl.modules.mc_modules",
    "MCHEvictionPolicy": "refimpl.modules.mc_modules",
    "LFU_EvictionPolicy": "refimpl.modules.mc_modules",
    "LRU_EvictionPolicy": "refimpl.modules.mc_modules",
    "DistanceLFU_EvictionPolicy": "refimpl.modules.mc_modules",
    "apply_mc_method_to_jt_dict": "refimpl.modules.mc_modules",
    "dynamic_threshold_filter": "refimpl.modules.mc_modules",
    "average_threshold_filter": "refimpl.modules.mc_modules",
    "probabilistic_threshold_filter": "refimpl.modules.mc_modules",
    # mc_embedding_modules
    "BaseManagedCollisionEmbeddingCollection": "refimpl.modules.mc_embedding_modules",
    "ManagedCollisionEmbeddingBagCollection": "refimpl.modules.mc_embedding_modules",
    "ManagedCollisionEmbeddingCollection": "refimpl.modules.mc_embedding_modules",
    # embedding_tower
    "EmbeddingTower": "refimpl.modules.embedding_tower",
    "EmbeddingTowerCollection": "refimpl.modules.embedding_tower",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'refimpl' has no attribute '{name}'")


def __dir__() -> list:
    return __all__
