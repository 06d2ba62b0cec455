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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'refimpl' has no attribute '{name}'")


def __dir__() -> list:
    return __all__
