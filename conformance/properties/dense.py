"""The dense modules' properties: SwishLayerNorm, Perceptron, MLP, the four cross networks,
FactorizationMachine and DeepFM.

Builds are small (widths 5, and 31/32/33 at tile boundaries) so that the whole set runs in
seconds. Each module variant gets the standard kinds (`standard_records`), then its invariants,
error records and discrepancy demonstrations. Spec quotes are from the documentation page
("page") or spec/semantics.md ("sem. N").
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from conformance import checks, tolerances
from conformance.properties import dense_checks as dc
from conformance.records import Act, Build, ErrorCase, Record
from conformance.tolerances import Tolerance

WIDTHS = (31, 32, 33)


def standard_records(module: str, builds: Sequence[Build], fd_builds: Sequence[Build], golden: str,
                     spec: str, suffix: str = "", f32_tolerance: Optional[Tolerance] = None) -> List[Record]:
    """forward (float64), forward_f32, backward_fd, autograd and the two golden records."""
    b, fd = tuple(builds), tuple(fd_builds)
    return [
        Record(module, f"forward{suffix}", "forward", "dense", b, checks.check_forward, spec),
        Record(module, f"forward_f32{suffix}", "forward_f32", "dense_many", b, checks.check_forward_f32, spec,
               tolerance=f32_tolerance, dtypes=("float32",)),
        Record(module, f"backward_fd{suffix}", "backward_fd", "dense_smooth", fd, checks.check_backward_fd,
               spec, sides=("refimpl",)),
        Record(module, f"autograd{suffix}", "autograd", "dense", b, checks.check_autograd, spec),
        Record(module, f"golden_refimpl{suffix}", "golden", f"golden file {golden}", (), checks.check_golden_refimpl,
               spec, sides=("refimpl",), data=(golden,)),
        Record(module, f"golden_accel{suffix}", "golden", f"golden file {golden}", (), checks.check_golden_accel,
               spec, sides=("accel",), data=(golden,)),
    ]


def state_record(module: str, builds: Sequence[Build], expected: Sequence[Sequence[Tuple[str, Tuple[int, ...]]]],
                 spec: str, suffix: str = "") -> Record:
    return Record(module, f"state_dict{suffix}", "invariant", "none (construction only)", tuple(builds),
                  dc.check_state_dict, spec, data=tuple(tuple(e) for e in expected))


def error_record(module: str, cases: Sequence[ErrorCase], spec: str) -> Record:
    return Record(module, "bad_input", "error", "hand-written bad inputs", (), checks.check_error, spec,
                  data=tuple(cases))


RECORDS: List[Record] = []
GOLDEN: List[Build] = []  # one file per build, named build.label + ".npz"

# --- SwishLayerNorm ------------------------------------------------------------------------------
SWISH_SPEC = ('page: "Applies the Swish function with layer normalization: Y = X * Sigmoid(LayerNorm(X))"; '
              "sem. 2: LN over the last len(input_dims) dims, biased variance, eps 1e-5, params norm.0.weight/bias")
_swish = [Build("SwishLayerNorm", (5,), in_shape=(5,), reduction=5, label="d=5"),
          Build("SwishLayerNorm", ((3, 4),), in_shape=(3, 4), reduction=12, label="d=[3,4]")]
_swish += [Build("SwishLayerNorm", (w,), in_shape=(w,), reduction=w, label=f"d={w}") for w in WIDTHS]
GOLDEN.append(Build("SwishLayerNorm", ((3, 4),), in_shape=(3, 4), reduction=12, label="SwishLayerNorm"))
RECORDS += standard_records("SwishLayerNorm", _swish, _swish[:2], "SwishLayerNorm.npz", SWISH_SPEC)
RECORDS += [
    Record("SwishLayerNorm", "forward_leading_dims", "forward", "leading_dims", tuple(_swish[:2]),
           checks.check_forward, 'page: "If an input tensor has shape [batch_size, d1, d2, d3], setting '
           'input_dim=[d2, d3] will do the layer normalization on last two dimensions."'),
    Record("SwishLayerNorm", "bounded", "invariant", "dense", tuple(_swish), dc.check_swish_bounded,
           "Y = X * Sigmoid(LayerNorm(X)) with Sigmoid in [0, 1], so |Y| <= |X| elementwise"),
    state_record("SwishLayerNorm", _swish[:2], [[("norm.0.weight", (5,)), ("norm.0.bias", (5,))],
                                                [("norm.0.weight", (3, 4)), ("norm.0.bias", (3, 4))]],
                 "sem. 2: `norm.0.weight`, `norm.0.bias`, shape = input_dims (int d -> (d,)), float32"),
    error_record("SwishLayerNorm", [
        ErrorCase("trailing dims differ from input_dims", _swish[0], ValueError, r"input", ("5", "6"), (2, 6)),
        ErrorCase("input_dims = 0", Build("SwishLayerNorm", (0,)), ValueError, r"input_dims", ("0",)),
    ], "sem. 2: trailing dims != input_dims is an error (TorchRec: RuntimeError; recspec: ValueError naming input)"),
    Record("SwishLayerNorm", "D11_input_dims_name", "discrepancy", "construction with input_dim=", (),
           dc.errors_check([ErrorCase("input_dim keyword", Build("SwishLayerNorm", (), (("input_dim", (3, 4)),)),
                                      TypeError, r"input_dim")]),
           'page: "setting input_dim=[d2, d3]"; sem. 16 D11: the argument is input_dims', discrepancy="D11",
           dtypes=("float32", "float64")),
]

# --- Perceptron -----------------------------------------------------------------------------
PERCEPTRON_SPEC = ('page: "Applies a linear transformation and activation."; sem. 5.1: forward activation(x W^T + b), '
                   "any leading shape (*, in)")
_perceptron = [Build("Perceptron", (5, 3), in_shape=(5,), reduction=5, label="5->3 relu"),
               Build("Perceptron", (5, 3), (("activation", Act("sigmoid")),), in_shape=(5,), reduction=5,
                     label="5->3 sigmoid"),
               Build("Perceptron", (5, 3), (("bias", False),), in_shape=(5,), reduction=5, label="5->3 no bias")]
_perceptron += [Build("Perceptron", (w, 4), in_shape=(w,), reduction=w, label=f"{w}->4") for w in WIDTHS]
GOLDEN.append(Build("Perceptron", (5, 3), (("activation", Act("sigmoid")),), in_shape=(5,), reduction=5,
                    label="Perceptron"))
RECORDS += standard_records("Perceptron", _perceptron, _perceptron[:3], "Perceptron.npz", PERCEPTRON_SPEC)
RECORDS += [
    Record("Perceptron", "forward_leading_dims", "forward", "leading_dims", tuple(_perceptron[:2]),
           checks.check_forward, "sem. 5.1: forward: activation(x W^T + b); any leading shape (*, in)"),
    Record("Perceptron", "formula", "invariant", "dense", (_perceptron[0],), dc.formula_check(dc.perceptron_formula),
           "sem. 5.1: forward: `activation(x Wᵀ + b)` (default activation relu)"),
    state_record("Perceptron", [_perceptron[0], _perceptron[2]],
                 [[("_linear.weight", (3, 5)), ("_linear.bias", (3,))], [("_linear.weight", (3, 5))]],
                 "sem. 5.1: keys `_linear.weight [out,in]`, `_linear.bias [out]`"),
    error_record("Perceptron", [
        ErrorCase("last dim != in_size", _perceptron[0], ValueError, r"input", ("5", "6"), (2, 6)),
        ErrorCase("in_size = -1", Build("Perceptron", (-1, 3)), ValueError, r"in_size", ("-1",)),
    ], "CONTRACT: wrong shapes raise ValueError naming the argument, the expected and the received value"),
    Record("Perceptron", "D9_output_shape", "discrepancy", "randn(3, 40)", (),
           dc.output_shape_check(Build("Perceptron", (40, 16), in_shape=(40,)), 3, (3, 16)),
           'page example: "assert list(output) == [batch_size, out_size]"; sem. 16 D9: list(output) lists rows',
           discrepancy="D9", dtypes=("float32", "float64")),
]

# --- MLP ------------------------------------------------------------------------------------
MLP_SPEC = ('page: "Applies a stack of Perceptron modules sequentially"; sem. 5.2: layer i maps layer_sizes[i-1] '
            "(in_size for i = 0) to layer_sizes[i]")
_mlp = [Build("MLP", (5, (4, 3)), in_shape=(5,), reduction=9, label="5->[4,3] relu"),
        Build("MLP", (5, (4, 3)), (("activation", "sigmoid"),), in_shape=(5,), reduction=9, label="5->[4,3] sigmoid"),
        Build("MLP", (5, (4, 3)), (("activation", "swish_layernorm"),), in_shape=(5,), reduction=16,
              label="5->[4,3] swish_layernorm"),
        Build("MLP", (5, (4, 3)), (("activation_on_last", False),), in_shape=(5,), reduction=9,
              label="5->[4,3] linear last")]
_mlp += [Build("MLP", (w, (8, 3)), in_shape=(w,), reduction=w + 8, label=f"{w}->[8,3]") for w in WIDTHS]
GOLDEN.append(Build("MLP", (5, (4, 3)), (("activation", "swish_layernorm"),), in_shape=(5,), reduction=16, label="MLP"))
RECORDS += standard_records("MLP", _mlp, _mlp[:4], "MLP.npz", MLP_SPEC)
RECORDS += [
    Record("MLP", "forward_leading_dims", "forward", "leading_dims", tuple(_mlp[:2]), checks.check_forward,
           "sem. 5.1: Perceptron takes any leading shape (*, in); an MLP is Perceptrons in sequence"),
    Record("MLP", "composed_perceptrons", "invariant", "dense", tuple(_mlp[:3]), dc.check_mlp_composed, MLP_SPEC),
    Record("MLP", "empty_layers_identity", "invariant", "dense", (Build("MLP", (5, ()), in_shape=(5,), label="[]"),),
           dc.formula_check(dc.identity), "sem. 5.2: `layer_sizes=[]` -> identity", tolerance=tolerances.EXACT),
    state_record("MLP", [_mlp[0], _mlp[2]],
                 [[("_mlp.0._linear.weight", (4, 5)), ("_mlp.0._linear.bias", (4,)),
                   ("_mlp.1._linear.weight", (3, 4)), ("_mlp.1._linear.bias", (3,))],
                  [("_mlp.0._linear.weight", (4, 5)), ("_mlp.0._linear.bias", (4,)),
                   ("_mlp.0._activation_fn.norm.0.weight", (4,)), ("_mlp.0._activation_fn.norm.0.bias", (4,)),
                   ("_mlp.1._linear.weight", (3, 4)), ("_mlp.1._linear.bias", (3,)),
                   ("_mlp.1._activation_fn.norm.0.weight", (3,)), ("_mlp.1._activation_fn.norm.0.bias", (3,))]],
                 "sem. 5.2: keys `_mlp.{i}._linear.weight/bias` (+ `_mlp.{i}._activation_fn.*` for module activations)"),
    error_record("MLP", [
        ErrorCase("last dim != in_size", _mlp[0], ValueError, r"input|in_size", ("5", "6"), (2, 6)),
        ErrorCase("unknown activation string", Build("MLP", (4, (8,)), (("activation", "tanh"),)), ValueError,
                  r"activation", ("tanh",)),
        ErrorCase("layer size -1", Build("MLP", (4, (8, -1))), ValueError, r"layer_sizes", ("-1",)),
    ], 'page: "If activation is a str, we currently only support the follow strings, as "relu", "sigmoid", and '
       '"swish_layernorm""'),
    Record("MLP", "D10_unknown_activation", "discrepancy", "MLP(4, [8], activation='tanh')", (),
           dc.errors_check(
               [ErrorCase("activation='tanh'", Build("MLP", (4, (8,)), (("activation", "tanh"),)), ValueError,
                          r"activation", ("tanh",))],
               [ErrorCase("TorchRec: forward fails", Build("MLP", (4, (8,)), (("activation", "tanh"),)),
                          AttributeError, r"_mlp", (), (2, 4))]),
           'page: "we currently only support the follow strings, as "relu", "sigmoid", and "swish_layernorm""; '
           "sem. 16 D10: TorchRec accepts other strings and fails at forward", discrepancy="D10",
           dtypes=("float32", "float64")),
]

# --- cross networks -------------------------------------------------------------------------
CROSS_SPEC = {
    "CrossNet": 'page: "x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l where W_l is a square matrix (NxN)"; sem. 3.1',
    "LowRankCrossNet": 'page: "x_{l+1} = x_0 * (W_l . (V_l . x_l) + b_l) + x_l"; sem. 3.2 (W (N,r), V (r,N))',
    "VectorCrossNet": "sem. 3.3: x_{l+1} = x0 * (x_l . w_l) + b_l + x_l, bias outside the x0 product (D3)",
    "LowRankMixtureCrossNet": ('page: "x_{l+1} = MoE({expert_i : i in K_experts}) + x_l", "expert_i = x_0 * '
                               '(U_li . g(C_li . g(V_li . x_l)) + b_l)"; sem. 3.4 (softmax gates on x_l, no bias)'),
}
L = 2  # layers: enough to feed one layer's rounding into the next, few enough to keep n small


def _cross(module: str, N: int, extra: Tuple = (), kwargs: Tuple = (), label: str = "") -> Build:
    r = extra[0] if module == "LowRankCrossNet" else (extra[1] if module == "LowRankMixtureCrossNet" else 0)
    # One layer reduces over N (and r twice for the low-rank forms); layers add up.
    reduction = L * (N + 2 * r)
    return Build(module, (N, L) + extra, kwargs, in_shape=(N,), reduction=reduction, label=label or f"N={N}")


_cross_builds = {
    "CrossNet": [_cross("CrossNet", 5)] + [_cross("CrossNet", w) for w in WIDTHS],
    "LowRankCrossNet": [_cross("LowRankCrossNet", 5, (2,))] + [_cross("LowRankCrossNet", w, (3,)) for w in WIDTHS],
    "VectorCrossNet": [_cross("VectorCrossNet", 5)] + [_cross("VectorCrossNet", w) for w in WIDTHS],
}
_mixture = {
    1: [_cross("LowRankMixtureCrossNet", 5, (1, 2))] + [_cross("LowRankMixtureCrossNet", w, (1, 3)) for w in WIDTHS],
    3: [_cross("LowRankMixtureCrossNet", 5, (3, 2)),
        _cross("LowRankMixtureCrossNet", 5, (3, 2), (("activation", Act("sigmoid")),), label="N=5 sigmoid")]
       + [_cross("LowRankMixtureCrossNet", w, (3, 3)) for w in WIDTHS],
}
for name, builds in _cross_builds.items():
    GOLDEN.append(Build(name, builds[0].args, in_shape=builds[0].in_shape, reduction=builds[0].reduction, label=name))
    RECORDS += standard_records(name, builds, builds[:1], f"{name}.npz", CROSS_SPEC[name])
    RECORDS.append(Record(name, "num_layers_0_identity", "invariant", "dense",
                          (Build(name, (5, 0), in_shape=(5,), label="L=0"),), dc.formula_check(dc.identity),
                          "sem. 3: `num_layers=0` returns the input unchanged", tolerance=tolerances.EXACT))
for K, builds in _mixture.items():
    label = f"LowRankMixtureCrossNet_K{K}"
    GOLDEN.append(Build("LowRankMixtureCrossNet", builds[0].args, in_shape=(5,), reduction=builds[0].reduction,
                        label=label))
    RECORDS += standard_records("LowRankMixtureCrossNet", builds, builds[:2], f"{label}.npz",
                                CROSS_SPEC["LowRankMixtureCrossNet"], suffix=f"[K={K}]")
RECORDS.append(Record("LowRankMixtureCrossNet", "num_layers_0_identity", "invariant", "dense",
                      (Build("LowRankMixtureCrossNet", (5, 0, 3, 2), in_shape=(5,), label="L=0"),),
                      dc.formula_check(dc.identity), "sem. 3: `num_layers=0` returns the input unchanged",
                      tolerance=tolerances.EXACT))

RECORDS += [
    Record("LowRankCrossNet", "forward_leading_dims", "forward", "leading_dims",
           tuple(_cross_builds["LowRankCrossNet"][:2]), checks.check_forward,
           "sem. 3.2: Works for any leading shape `(*, N)` (only this cross net does)"),
    Record("CrossNet", "zero_kernels", "invariant", "dense", tuple(_cross_builds["CrossNet"][:2]),
           dc.formula_check(dc.zero_kernel_cross, dc.zero_kernels(("kernels.",))),
           "x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l with W_l = 0 is x_0 * b_l + x_l"),
    Record("LowRankCrossNet", "zero_kernels", "invariant", "dense", tuple(_cross_builds["LowRankCrossNet"][:2]),
           dc.formula_check(dc.zero_kernel_cross, dc.zero_kernels(("W_kernels.",))),
           "x_{l+1} = x_0 * (W_l . (V_l . x_l) + b_l) + x_l with W_l = 0 is x_0 * b_l + x_l"),
    Record("VectorCrossNet", "zero_kernels", "invariant", "dense", tuple(_cross_builds["VectorCrossNet"][:2]),
           dc.formula_check(dc.zero_kernel_vector_cross, dc.zero_kernels(("kernels.",))),
           "sem. 3.3: x_{l+1} = x0 * (x_l . w_l) + b_l + x_l with w_l = 0 is b_l + x_l"),
    Record("LowRankMixtureCrossNet", "zero_kernels", "invariant", "dense", (_mixture[1][0], _mixture[3][0]),
           dc.formula_check(dc.zero_kernel_cross, dc.zero_kernels(("U_kernels.",))),
           "expert_i = x_0 * (U_li . g(...) + b_l) with U = 0 is x_0 * b_l for every i; the gates sum to one, "
           "so x_{l+1} = x_0 * b_l + x_l"),
    Record("LowRankMixtureCrossNet", "one_expert", "invariant", "dense", (_mixture[1][0], _mixture[3][0]),
           dc.check_mixture_one_expert,
           'page: "When num_expert is 1, the gate evaluation and MOE will be skipped"; K identical experts mix to '
           "that expert (softmax weights sum to one)"),
    state_record("CrossNet", [_cross("CrossNet", 4)],
                 [[("kernels.0", (4, 4)), ("kernels.1", (4, 4)), ("bias.0", (4, 1)), ("bias.1", (4, 1))]],
                 "sem. 3.1: `kernels.{l}` `[N,N]` (all layers first), then `bias.{l}` `[N,1]`"),
    state_record("VectorCrossNet", [_cross("VectorCrossNet", 4)],
                 [[("kernels.0", (4, 1)), ("kernels.1", (4, 1)), ("bias.0", (4, 1)), ("bias.1", (4, 1))]],
                 "sem. 3.3: `kernels.{l}` `[N,1]`, then `bias.{l}` `[N,1]`"),
    state_record("LowRankMixtureCrossNet", [_cross("LowRankMixtureCrossNet", 4, (1, 2)),
                                            _cross("LowRankMixtureCrossNet", 4, (3, 2))],
                 [[("U_kernels.0", (1, 4, 2)), ("U_kernels.1", (1, 4, 2)), ("V_kernels.0", (1, 2, 4)),
                   ("V_kernels.1", (1, 2, 4)), ("bias.0", (4, 1)), ("bias.1", (4, 1)),
                   ("C_kernels.0", (1, 2, 2)), ("C_kernels.1", (1, 2, 2))],
                  [("U_kernels.0", (3, 4, 2)), ("U_kernels.1", (3, 4, 2)), ("V_kernels.0", (3, 2, 4)),
                   ("V_kernels.1", (3, 2, 4)), ("bias.0", (4, 1)), ("bias.1", (4, 1)),
                   ("gates.0.weight", (1, 4)), ("gates.1.weight", (1, 4)), ("gates.2.weight", (1, 4)),
                   ("C_kernels.0", (3, 2, 2)), ("C_kernels.1", (3, 2, 2))]],
                 "sem. 3.4: state_dict key order: U_kernels, V_kernels, bias, gates (K > 1 only), C_kernels"),
]

_cross_errors = {
    "CrossNet": [
        ErrorCase("last dim != in_features", _cross("CrossNet", 5), ValueError, r"input", ("5", "6"), (2, 6)),
        ErrorCase("3-D input", _cross("CrossNet", 5), ValueError, r"input", ("(2, 3, 5)",), (2, 3, 5)),
        ErrorCase("1-D input", _cross("CrossNet", 5), ValueError, r"input", ("(5,)",), (5,)),
        ErrorCase("in_features = 0", Build("CrossNet", (0, 2)), ValueError, r"in_features", ("0",)),
    ],
    "LowRankCrossNet": [
        ErrorCase("last dim != in_features", _cross("LowRankCrossNet", 5, (2,)), ValueError, r"input", ("5", "6"),
                  (2, 6)),
        ErrorCase("low_rank = 0", Build("LowRankCrossNet", (5, 2, 0)), ValueError, r"low_rank", ("0",)),
    ],
    "VectorCrossNet": [
        ErrorCase("last dim != in_features", _cross("VectorCrossNet", 5), ValueError, r"input", ("5", "6"), (2, 6)),
        ErrorCase("3-D input", _cross("VectorCrossNet", 5), ValueError, r"input", ("(2, 3, 5)",), (2, 3, 5)),
    ],
    "LowRankMixtureCrossNet": [
        ErrorCase("last dim != in_features", _mixture[3][0], ValueError, r"input", ("5", "6"), (2, 6)),
        ErrorCase("3-D input", _mixture[3][0], ValueError, r"input", ("(2, 3, 5)",), (2, 3, 5)),
        ErrorCase("low_rank = 0", Build("LowRankMixtureCrossNet", (5, 2, 3, 0)), ValueError, r"low_rank", ("0",)),
        ErrorCase("num_experts = 0", Build("LowRankMixtureCrossNet", (5, 2, 0, 2)), ValueError, r"num_experts",
                  ("0",)),
    ],
}
for name, cases in _cross_errors.items():
    RECORDS.append(error_record(name, cases, 'page: "low_rank (int) - ... Value must be always >= 1"; sem. 3: '
                                              "input must be 2-D [B, N] (LowRankCrossNet: (*, N))"))

RECORDS += [
    Record("CrossNet", "D1_in_features_required", "discrepancy", "constructors without in_features", (),
           dc.errors_check([ErrorCase(f"{name}(num_layers=2)", Build(name, (), (("num_layers", 2),)), TypeError,
                                      r"in_features") for name in ("CrossNet", "LowRankCrossNet", "VectorCrossNet")]),
           'page example: "dcn = CrossNet(num_layers=num_layers)"; sem. 16 D1: in_features is required',
           discrepancy="D1", dtypes=("float32", "float64")),
    Record("LowRankCrossNet", "D2_no_num_experts", "discrepancy", "LowRankCrossNet(..., num_experts=5)", (),
           dc.errors_check([ErrorCase("num_experts keyword",
                                      Build("LowRankCrossNet", (), (("in_features", 10), ("num_layers", 2),
                                                                    ("num_experts", 5), ("low_rank", 3))),
                                      TypeError, r"num_experts")]),
           'page example: "dcn = LowRankCrossNet(num_layers=num_layers, num_experts=5, low_rank=3)"; sem. 16 D2',
           discrepancy="D2", dtypes=("float32", "float64")),
    Record("VectorCrossNet", "D3_bias_placement", "discrepancy", "W = 0, b = 1, x = [[2, 3]]", (),
           dc.values_check(dc.vector_cross_d3_state, np.array([[2.0, 3.0]]), [[3.0, 4.0]], dc.vector_cross_d3_documented),
           'page: "x_{l+1} = x_0 * (W_l . x_l + b_l) + x_l"; sem. 16 D3: TorchRec computes x0*(W.x_l) + b + x_l: '
           "W=0, b=1, x=[[2,3]] gives [[3,4]] (page: [[4,6]])", discrepancy="D3", dtypes=("float32", "float64")),
    Record("CrossNet", "D4_input_shape", "discrepancy", "inputs (2, 3, N)", (),
           dc.check_d4_input_shape,
           'page: "Cross Net is a stack of crossing operations on a tensor of shape (*, N)"; sem. 16 D4: only '
           "LowRankCrossNet accepts (*, N)", discrepancy="D4", dtypes=("float32", "float64")),
    Record("LowRankCrossNet", "D5_state_shapes", "discrepancy", "construction only",
           (Build("LowRankCrossNet", (4, 1, 2)), Build("VectorCrossNet", (4, 1))), dc.check_state_dict,
           'page: "where W_l is either a vector"; sem. 16 D5: W_kernels.0 (4,2), bias.0 (4,) for LowRankCrossNet',
           discrepancy="D5", dtypes=("float32", "float64"),
           data=(((("W_kernels.0", (4, 2)), ("V_kernels.0", (2, 4)), ("bias.0", (4,)))),
                 ((("kernels.0", (4, 1)), ("bias.0", (4, 1)))))),
    Record("CrossNet", "torchrec_test_values", "golden", "TorchRec's test: seed 0, randn(3, 2), 20 layers",
           (Build("CrossNet", (2, 20), in_shape=(2,)),), dc.check_torchrec_values,
           "sem. 15 test_crossnet.py: seed 0, B=3, N=2, 20 layers, exact numeric outputs (rtol/atol 1e-4)",
           data=((((3, 2),), [[2.4481, 2.2710], [-63.1721, -109.2410], [1.4030, 1.0054]]),),
           dtypes=("float32",)),
    Record("LowRankCrossNet", "torchrec_test_values", "golden", "TorchRec's test: seed 0, randn(3, 2), 20 layers",
           (Build("LowRankCrossNet", (2, 20, 10), in_shape=(2,)),), dc.check_torchrec_values,
           "sem. 15 test_crossnet.py: LowRankCrossNet(r=10) values (rtol/atol 1e-4)",
           data=((((3, 2),), [[-11.5, -3.4863], [-0.2742, -0.3330], [249.6694, 117.3466]]),), dtypes=("float32",)),
    Record("VectorCrossNet", "torchrec_test_values", "golden", "TorchRec's test: seed 0, randn(3, 2), 20 layers",
           (Build("VectorCrossNet", (2, 20), in_shape=(2,)),), dc.check_torchrec_values,
           "sem. 15 test_crossnet.py: VectorCrossNet values (rtol/atol 1e-4)",
           data=((((3, 2),), [[1.8289e-4, -3.4827e-5], [-220.84, 57.615], [-133.28, -171.87]]),),
           dtypes=("float32",)),
    Record("LowRankMixtureCrossNet", "torchrec_test_values", "golden",
           "TorchRec's test: seed 0, randn(3, 2), 20 layers, K=4 and K=1, r=10",
           (Build("LowRankMixtureCrossNet", (2, 20, 4, 10), in_shape=(2,), label="K=4"),
            Build("LowRankMixtureCrossNet", (2, 20, 1, 10), in_shape=(2,), label="K=1")), dc.check_torchrec_values,
           "sem. 15 test_crossnet.py: LowRankMixtureCrossNet(K=4,r=10) and K=1 values (rtol/atol 1e-4)",
           data=((((3, 2),), [[1.7045, -0.2848], [-2.5357, 0.5811], [-0.9467, -1.3091]]),
                 (((3, 2),), [[3.9203, -0.2686], [-9.5767, 0.8621], [-2.5836, -1.8124]])), dtypes=("float32",)),
]

# --- FactorizationMachine and DeepFM --------------------------------------------------------
FM_SPEC = ("sem. 4: out = 1/2 ((sum_j flat_j)^2 - sum_j flat_j^2) = sum_{j<k} flat_j flat_k over all scalar "
           "entries of the flattened input (D8)")
_LIST = ((2, 3), (4,))  # a (B, 2, 3) and a (B, 4) embedding: 3-D and 2-D inputs, 10 scalars
_fm = [Build("FactorizationMachine", in_shape=_LIST, reduction=10, label="[(2,3),(4,)]")]
_fm += [Build("FactorizationMachine", in_shape=((w,),), reduction=w, label=f"[({w},)]") for w in WIDTHS]
GOLDEN.append(Build("FactorizationMachine", in_shape=((2, 3), (3, 2), (4,)), reduction=16,
                    label="FactorizationMachine"))
# accel's FM kernel accumulates each row's sum and sum of squares sequentially in float32 (error
# growing like n eps) where NumPy sums pairwise (like log2(n) eps); with n <= 33 that is a
# systematic factor of about 2 on top of the sampling noise (ratios up to 5.6 over 24 seeds).
_FM_F32 = tolerances.forward32(8.0, "float32: at most 8 x refimpl-float32's error: accel sums each row "
                                    "sequentially (n eps growth), NumPy pairwise (log2(n) eps)")
RECORDS += standard_records("FactorizationMachine", _fm, _fm[:2], "FactorizationMachine.npz", FM_SPEC,
                            f32_tolerance=_FM_F32)
RECORDS += [
    Record("FactorizationMachine", "pairwise_sum", "invariant", "dense", tuple(_fm[:2]),
           dc.formula_check(dc.fm_pairwise), FM_SPEC),
    error_record("FactorizationMachine", [
        ErrorCase("empty list", _fm[0], ValueError, r"embeddings", (), []),
        ErrorCase("batch sizes differ", _fm[0], ValueError, r"embeddings|batch", ("2", "3"), [(2, 2, 3), (3, 4)]),
        ErrorCase("1-D tensor", _fm[0], ValueError, r"embeddings", ("(4,)",), [(2, 2, 3), (4,)]),
    ], 'page: "batch_size of all input tensors need to be identical"; sem. 4: empty list -> ValueError'),
    Record("FactorizationMachine", "D8_all_scalar_pairs", "discrepancy", "[[[1, 1]]]", (),
           dc.values_check(dc.fm_d8_state, [np.array([[[1.0, 1.0]]])], [[1.0]], dc.fm_d8_fieldwise),
           'page: "Class FactorizationMachine implements FM as noted in the above paper"; sem. 16 D8: [[[1,1]]] '
           "-> 1.0 (paper FM: 0)", discrepancy="D8", dtypes=("float32", "float64")),
    Record("FactorizationMachine", "torchrec_test_values", "golden",
           "TorchRec's test: seed 0, randn (3,2,64), (3,2,32), (3,3,100), (3,5,120)",
           (Build("FactorizationMachine", in_shape=((2, 64), (2, 32), (3, 100), (5, 120))),),
           dc.check_torchrec_values, "sem. 15 test_deepfm.py: FM values [[-577.5231],[752.7272],[-509.1023]]",
           data=((((3, 2, 64), (3, 2, 32), (3, 3, 100), (3, 5, 120)), [[-577.5231], [752.7272], [-509.1023]]),),
           dtypes=("float32",)),
]

DEEPFM_SPEC = ('page: "output of dense_module with flattened and concatenated embeddings as input"; sem. 4: '
               "flat = cat([t.flatten(1) for t in embeddings], dim=1)")
_deepfm = [Build("DeepFM", (Build("Linear", (10, 3)),), in_shape=_LIST, reduction=10, label="Linear(10,3)"),
           Build("DeepFM", (Build("MLP", (10, (4, 2))),), in_shape=_LIST, reduction=14, label="MLP(10,[4,2])")]
_deepfm += [Build("DeepFM", (Build("Linear", (w, 2)),), in_shape=((w,),), reduction=w, label=f"Linear({w},2)")
            for w in WIDTHS]
GOLDEN.append(Build("DeepFM", (Build("Linear", (16, 3)),), in_shape=((2, 3), (3, 2), (4,)), reduction=16,
                    label="DeepFM"))
RECORDS += standard_records("DeepFM", _deepfm, _deepfm[:2], "DeepFM.npz", DEEPFM_SPEC)
RECORDS += [
    Record("DeepFM", "dense_of_flat", "invariant", "dense", (_deepfm[0],), dc.formula_check(dc.deepfm_linear),
           DEEPFM_SPEC),
    state_record("DeepFM", [_deepfm[0]], [[("dense_module.weight", (3, 10)), ("dense_module.bias", (3,))]],
                 "sem. 4: only submodule `dense_module` (state_dict keys `dense_module.*`)"),
    error_record("DeepFM", [
        ErrorCase("empty list", _deepfm[0], ValueError, r"embeddings", (), []),
        ErrorCase("batch sizes differ", _deepfm[0], ValueError, r"embeddings|batch", ("2", "3"), [(2, 2, 3), (3, 4)]),
    ], 'page: "batch_size of all input tensors need to be identical"; sem. 4: empty list -> ValueError'),
]
