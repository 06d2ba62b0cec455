"""The dense sweep's cases: module, shapes, a written work model, GEMM shapes and the target.

Work models count what the maths must touch, not what a given implementation does:

- GEMM-shaped modules (cross nets but VectorCrossNet, MLP) count multiply-adds as 2 FLOPs each,
  over the products `(m, k) x (k, n)` listed in `gemms`; elementwise work is not counted. The
  backward of each product is two products of the same size (grad of the input and of the
  weight), so fwd+bwd = 3 x fwd.
- Bandwidth-bound modules count float32 bytes that must cross memory at least once, as a
  formula per case written next to it (B batch, N width, M flattened width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

Gemm = Tuple[int, int, int]  # (m, k, n): an (m, k) x (k, n) product
F32 = 4  # bytes


@dataclass(frozen=True)
class Work:
    unit: str  # "GFLOP/s" or "GB/s"
    fwd: float  # FLOPs or bytes of the forward
    fwd_bwd: float  # FLOPs or bytes of forward plus backward
    formula: str  # how `fwd` and `fwd_bwd` were counted, for the report


@dataclass(frozen=True)
class Target:
    """accel's fwd+bwd time must beat `against` ("anchor": anchor_ms / accel_ms >= factor;
    "gemm": accel_ms / gemm_ms <= factor)."""

    against: str
    factor: float
    text: str


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    module: str  # class name, the same in torchrec.modules, refimpl, accel and the anchors
    kwargs: Dict[str, object]
    input_shapes: Tuple[Tuple[int, ...], ...]
    list_input: bool  # forward takes a list of tensors (FM, DeepFM) rather than one tensor
    work: Work
    target: Target
    gemms: Tuple[Gemm, ...] = ()
    dense_linear: Optional[Tuple[int, int]] = None  # DeepFM's dense module: Linear(in, out)


def _gemm_work(gemms: Sequence[Gemm]) -> Work:
    fwd = float(sum(2 * m * k * n for m, k, n in gemms))
    return Work("GFLOP/s", fwd, 3 * fwd, "2*m*k*n per product; fwd+bwd = 3 x fwd")


@dataclass(frozen=True)
class Dims:
    """The sweep's shapes; `tiny()` shrinks every one of them for the smoke test."""

    batch: int = 4096
    n: int = 512  # cross-net width, SwishLayerNorm width, MLP input
    layers: int = 3
    rank: int = 64
    experts: int = 4
    fields: int = 26  # FM / DeepFM: embeddings per sample
    dim: int = 64  # FM / DeepFM: embedding dimension
    mlp_sizes: Tuple[int, ...] = (512, 256, 1)

    @staticmethod
    def tiny(batch: int = 8) -> "Dims":
        return Dims(batch=batch, n=16, layers=2, rank=4, experts=2, fields=3, dim=4, mlp_sizes=(16, 8, 1))


def dense_cases(d: Dims) -> List[Case]:
    b, n, L, r, k = d.batch, d.n, d.layers, d.rank, d.experts
    m = d.fields * d.dim

    cross = ((b, n, n),) * L
    low_rank = ((b, n, r), (b, r, n)) * L
    # All experts' V (and U) products side by side are one product of width k*r; C is per expert.
    mixture = ((b, n, k), (b, n, k * r)) + ((b, r, r),) * k + ((b, k * r, n),)
    mixture = mixture * L
    vector = ((b, n, 1),) * L
    mlp_in = (n,) + d.mlp_sizes[:-1]
    mlp = tuple((b, i, o) for i, o in zip(mlp_in, d.mlp_sizes))

    return [
        Case(
            "CrossNet", f"CrossNet({n}, {L} layers)", "CrossNet",
            dict(in_features=n, num_layers=L), ((b, n),), False,
            _gemm_work(cross), Target("gemm", 1.1, "fwd+bwd within 1.1x of the GEMM time"), cross,
        ),
        Case(
            "LowRankCrossNet", f"LowRankCrossNet({n}, {L} layers, rank {r})", "LowRankCrossNet",
            dict(in_features=n, num_layers=L, low_rank=r), ((b, n),), False,
            _gemm_work(low_rank), Target("anchor", 1.0, "no slower than TorchRec"), low_rank,
        ),
        Case(
            "LowRankMixtureCrossNet",
            f"LowRankMixtureCrossNet({n}, {L} layers, {k} experts, rank {r})",
            "LowRankMixtureCrossNet",
            dict(in_features=n, num_layers=L, num_experts=k, low_rank=r), ((b, n),), False,
            _gemm_work(mixture), Target("anchor", 2.0, "fwd+bwd at least 2x TorchRec"), mixture,
        ),
        Case(
            "VectorCrossNet", f"VectorCrossNet({n}, {L} layers)", "VectorCrossNet",
            dict(in_features=n, num_layers=L), ((b, n),), False,
            # fwd, per layer: read x_0 and x_l, write x_{l+1}. bwd, per layer: read g_{l+1},
            # x_0, x_l and the running grad of x_0, write g_l and that grad.
            Work("GB/s", 3.0 * L * b * n * F32, 9.0 * L * b * n * F32,
                 "fwd 3*L*B*N*4 bytes; fwd+bwd 9*L*B*N*4"),
            Target("anchor", 5.0, "fwd+bwd at least 5x TorchRec"), vector,
        ),
        Case(
            "FactorizationMachine", f"FactorizationMachine on [{b}, {d.fields}, {d.dim}]",
            "FactorizationMachine", {}, ((b, d.fields, d.dim),), True,
            # fwd: read the input, write one scalar per row. bwd: read the input and the row
            # gradient, write the input gradient.
            Work("GB/s", (b * m + b) * F32, (3 * b * m + 2 * b) * F32,
                 "fwd (B*M + B)*4 bytes; fwd+bwd (3*B*M + 2*B)*4, M = fields*dim"),
            Target("anchor", 3.0, "fwd+bwd at least 3x TorchRec"),
        ),
        Case(
            "SwishLayerNorm", f"SwishLayerNorm({n}) on [{b}, {n}]", "SwishLayerNorm",
            dict(input_dims=n), ((b, n),), False,
            # fwd: read x, write y. bwd: read x and g, write the input gradient.
            Work("GB/s", 2.0 * b * n * F32, 5.0 * b * n * F32, "fwd 2*B*N*4 bytes; fwd+bwd 5*B*N*4"),
            Target("anchor", 3.0, "fwd+bwd at least 3x TorchRec"),
        ),
        Case(
            "MLP", f"MLP({n}, {list(d.mlp_sizes)})", "MLP",
            dict(in_size=n, layer_sizes=list(d.mlp_sizes)), ((b, n),), False,
            _gemm_work(mlp), Target("anchor", 1.0, "no slower than TorchRec"), mlp,
        ),
        Case(
            "DeepFM", f"DeepFM(Linear({m}, 1)) on {d.fields} x [{b}, {d.dim}]", "DeepFM",
            {}, ((b, d.dim),) * d.fields, True,
            # fwd: read the embeddings and the weight, write one scalar per row. bwd: read the
            # embeddings (weight grad) and the row gradient, write the embedding gradients.
            Work("GB/s", (b * m + m + b) * F32, (3 * b * m + 2 * m + 2 * b) * F32,
                 "fwd (B*M + M + B)*4 bytes; fwd+bwd (3*B*M + 2*M + 2*B)*4, M = fields*dim"),
            Target("anchor", 1.0, "no slower than TorchRec"),
            dense_linear=(m, 1),
        ),
    ]
