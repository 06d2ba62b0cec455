"""The embedding modules' properties: EmbeddingBagCollection, EmbeddingCollection,
PositionWeightedModule, PositionWeightedProcessor, EmbeddingTower and EmbeddingTowerCollection.

Tables are small (5 to 9 rows, D 2 to 4, and one D = 33 build at a tile boundary) and the inputs
are named jagged cases (embeddings_cases) with empty bags, B = 0 and bags of 31/32/33 ids, so
that the whole set runs in seconds. Spec quotes are from the documentation page ("page") or
spec/semantics.md ("sem. N"). `reduction` is the longest bag (33 ids), plus the interaction's
width for the towers.
"""

from __future__ import annotations

from typing import List, Sequence

from conformance.properties import embeddings_checks as ec
from conformance.properties import embeddings_discrepancies as dd
from conformance.properties import embeddings_golden as eg
from conformance.properties.embeddings_checks import JaggedError
from conformance.properties.embeddings_io import batch, table
from conformance.records import Build, Record

LONGEST = 33  # the longest bag of the generated cases


def _ebc(tables, label: str, weighted: bool = False) -> Build:
    kwargs = (("is_weighted", True),) if weighted else ()
    return Build("EmbeddingBagCollection", (tuple(tables),), kwargs, reduction=LONGEST, label=label)


def _ec(tables, label: str, need_indices: bool = False) -> Build:
    kwargs = (("need_indices", True),) if need_indices else ()
    return Build("EmbeddingCollection", (tuple(tables),), kwargs, reduction=1, label=label)


def _bag(name, rows, dim, features, **kw) -> Build:
    return table("EmbeddingBagConfig", name, rows, dim, features, **kw)


def _seq(name, rows, dim, features) -> Build:
    return table("EmbeddingConfig", name, rows, dim, features)


def standard(module: str, builds: Sequence[Build], fd_builds: Sequence[Build], f32_builds: Sequence[Build],
             spec: str, golden: str = "") -> List[Record]:
    """forward (float64), forward_f32, backward_fd, autograd and, with a golden file, its two records."""
    records = [
        Record(module, "forward", "forward", "jagged", tuple(builds), ec.check_forward, spec),
        Record(module, "forward_f32", "forward_f32", "jagged_many", tuple(f32_builds), ec.check_forward_f32, spec,
               dtypes=("float32",)),
        Record(module, "backward_fd", "backward_fd", "jagged_small", tuple(fd_builds), ec.check_backward_fd, spec,
               sides=("refimpl",)),
        Record(module, "autograd", "autograd", "jagged", tuple(builds), ec.check_autograd, spec),
    ]
    if golden:
        records += [
            Record(module, "golden_refimpl", "golden", f"golden file {golden}", (), eg.check_golden_refimpl, spec,
                   sides=("refimpl",), data=(golden,)),
            Record(module, "golden_accel", "golden", f"golden file {golden}", (), eg.check_golden_accel, spec,
                   sides=("accel",), data=(golden,)),
        ]
    return records


def errors(module: str, cases: Sequence[JaggedError], spec: str) -> Record:
    return Record(module, "bad_input", "error", "hand-written bad inputs", (), ec.check_jagged_errors, spec,
                  data=tuple(cases))


def discrepancy(module: str, prop: str, check, spec: str, ident: str) -> Record:
    return Record(module, prop, "discrepancy", "hand-written demonstration", (), check, spec, discrepancy=ident,
                  dtypes=("float32", "float64"))


RECORDS: List[Record] = []
GOLDEN: List[Build] = []

# --- configs -----------------------------------------------------------------------------------
RECORDS.append(discrepancy(
    "EmbeddingBagConfig", "D12_init_fn_and_fields", dd.check_d12,
    'page: "pruning_indices_remapping: Optional[Tensor] = None", "init_fn: Optional[Callable] = None"; sem. 6.2 / '
    "16 D12: num_embeddings_post_pruning; init_fn filled with partial(uniform_), so equal configs compare unequal",
    "D12"))

FUSED_SPEC = ("issue 3 item 6, docs/embeddings.md: FBGEMM's EXACT_SGD / EXACT_ADAGRAD / EXACT_ROWWISE_ADAGRAD on the "
              "touched rows, gradients of equal ids summed first: w -= lr g; G += g^2, w -= lr g / (sqrt(G) + eps); "
              "G += mean(g^2), w -= lr g / (sqrt(G) + eps)")

# --- EmbeddingBagCollection ----------------------------------------------------------------------
EBC_SPEC = ("sem. 7.2: per (table, feature) slot, SUM: sum_j w_j W[i_j] (w = 1 unless is_weighted), MEAN: "
            "(1/L) sum_j W[i_j], empty bag -> zeros; KeyedTensor(keys = embedding names f or f@t, values "
            "[B, sum D]) in table then feature order")
_mixed = _ebc([_bag("t0", 7, 3, ("f0", "f1")), _bag("t1", 5, 2, ("f1", "f2"), pooling="MEAN")], "SUM+MEAN shared f1")
_weighted = _ebc([_bag("t0", 7, 3, ("f0", "f1")), _bag("t1", 6, 4, ("f2",))], "weighted SUM", weighted=True)
_weighted_mean = _ebc([_bag("t0", 7, 3, ("f0",)), _bag("t1", 6, 2, ("f1",), pooling="MEAN")], "weighted SUM+MEAN",
                      weighted=True)
_wide = _ebc([_bag("t0", 9, 33, ("f0",)), _bag("t1", 5, 32, ("f1",), pooling="MEAN")], "D=33,32")
_ebc_builds = [_mixed, _weighted, _weighted_mean, _wide]
GOLDEN += [
    _ebc([_bag("t0", 7, 3, ("f0", "f1")), _bag("t1", 5, 2, ("f1", "f2"), pooling="MEAN")], "EmbeddingBagCollection"),
    _ebc([_bag("t0", 7, 3, ("f0", "f1")), _bag("t1", 6, 2, ("f2",))], "EmbeddingBagCollection_weighted",
         weighted=True),
]
RECORDS += standard("EmbeddingBagCollection", _ebc_builds, [_mixed, _weighted_mean], [_mixed, _weighted, _wide],
                    EBC_SPEC, "EmbeddingBagCollection.npz")
RECORDS += [
    Record("EmbeddingBagCollection", "golden_refimpl[weighted]", "golden", "golden file "
           "EmbeddingBagCollection_weighted.npz", (), eg.check_golden_refimpl, EBC_SPEC, sides=("refimpl",),
           data=("EmbeddingBagCollection_weighted.npz",)),
    Record("EmbeddingBagCollection", "golden_accel[weighted]", "golden", "golden file "
           "EmbeddingBagCollection_weighted.npz", (), eg.check_golden_accel, EBC_SPEC, sides=("accel",),
           data=("EmbeddingBagCollection_weighted.npz",)),
    *[Record("EmbeddingBagCollection", f"fused_{rule}_steps", "autograd", "jagged_small", (_mixed, _weighted),
             ec.check_fused_steps, FUSED_SPEC, data=(rule,)) for rule in ("sgd", "adagrad", "rowwise_adagrad")],
    Record("EmbeddingBagCollection", "formula", "invariant", "jagged", tuple(_ebc_builds), ec.check_ebc_formula,
           EBC_SPEC + "; weighted MEAN = sum_j w_j W[i_j] / L (recspec, D34)"),
    Record("EmbeddingBagCollection", "empty_bag_zeros", "invariant", "jagged", (_mixed, _weighted_mean),
           ec.check_empty_bags_zero, "sem. 7.2: empty bag -> zeros for both SUM and MEAN"),
    Record("EmbeddingBagCollection", "mean_is_sum_over_length", "invariant", "jagged", (_mixed,),
           ec.check_mean_is_sum_over_length, "sem. 7.2: MEAN: (1/L) sum_j W[i_j], i.e. MEAN x L = SUM"),
    Record("EmbeddingBagCollection", "key_order", "invariant", "jagged", (_mixed, _weighted), ec.check_key_order,
           "sem. 7.2: extra KJT keys ignored; KJT key order irrelevant"),
    Record("EmbeddingBagCollection", "init_bounds", "invariant", "none (construction only)", (_mixed, _wide),
           ec.check_init_bounds, "sem. 6.2 / 7.2: init_fn default U(-sqrt(1/num_embeddings), sqrt(1/num_embeddings))",
           dtypes=("float32", "float64")),
    Record("EmbeddingBagCollection", "unweighted_ignores_weights", "invariant", "jagged", (_mixed,),
           ec.check_ignores_weights, "sem. 7.2 step 3: is_weighted=False: KJT weights silently ignored"),
    errors("EmbeddingBagCollection", [
        JaggedError("feature a table needs missing", _mixed, ValueError, r"f2", ("f2", "t1"),
                    batch(["f0", "f1"], [1, 0], [0])),
        JaggedError("id = num_embeddings", _mixed, IndexError, r"f0", ("f0", "t0", "7"),
                    batch(["f0", "f1", "f2"], [1, 0, 0], [7])),
        JaggedError("negative id", _mixed, IndexError, r"f0", ("f0", "t0", "-1"),
                    batch(["f0", "f1", "f2"], [1, 0, 0], [-1])),
        JaggedError("shared feature out of the smaller table", _mixed, IndexError, r"f1", ("f1", "t1", "5"),
                    batch(["f0", "f1", "f2"], [0, 1, 0], [5])),
        JaggedError("weighted collection, KJT without weights", _weighted, ValueError, r"weights", (),
                    batch(["f0", "f1", "f2"], [1, 0, 0], [0])),
        JaggedError("lengths do not sum to the values", _mixed, ValueError, r"lengths|offsets|values", ("3", "2"),
                    batch(["f0", "f1", "f2"], [1, 1, 1], [0, 1])),
        JaggedError("negative length", _mixed, ValueError, r"lengths", ("-1",),
                    batch(["f0", "f1", "f2"], [2, -1, 0], [0])),
        JaggedError("pooling NONE", _ebc([_bag("t", 5, 2, ("f",), pooling="NONE")], "NONE"), ValueError,
                    r"pooling", ("NONE",)),
        JaggedError("duplicate table name", _ebc([_bag("t", 5, 2, ("f",)), _bag("t", 5, 2, ("g",))], "dup"),
                    ValueError, r"Duplicate table name", ("t",)),
    ], "CONTRACT: a feature a table needs missing from the input, ids outside [0, num_embeddings), mismatched "
       "lengths and invalid configuration raise ValueError/IndexError naming the argument, feature or table"),
    discrepancy("EmbeddingBagCollection", "D13_keyed_tensor_layout", dd.check_d13,
                'page: "values of the form [B * (F * D)]", "print(pooled_embeddings.offset_per_key()) tensor([0, 3, '
                '7])"; sem. 16 D13: values is 2-D [B, sum D], offset_per_key a Python list', "D13"),
    discrepancy("EmbeddingBagCollection", "D31_bf16_storage", dd.check_d31,
                "sem. 7.2 / 16 D31: any non-FP32 data_type (FP16, BF16, INT8, ...) gives float16 weights", "D31"),
    discrepancy("EmbeddingBagCollection", "D33_batch_size_0", dd.check_d33,
                "sem. 16.1: EBC/EC B=0 input -> IndexError (KJT.to_dict)", "D33"),
    discrepancy("EmbeddingBagCollection", "D34_weighted_mean", dd.check_d34,
                "sem. 7.2 step 3 / 16.1: MEAN + weights -> NotImplementedError (torch)", "D34"),
]

# --- EmbeddingCollection ----------------------------------------------------------------------
EC_SPEC = ("sem. 7.3: dict in table then feature order, key = embedding name (f, or f@table when shared), "
           "value = JT(values = W[ids] [n_f, D], lengths = per-key lengths, weights = ids if need_indices)")
_ec_shared = _ec([_seq("t0", 7, 3, ("f0", "f1")), _seq("t1", 5, 3, ("f1",))], "shared f1, need_indices",
                 need_indices=True)
_ec_plain = _ec([_seq("t0", 9, 4, ("f0", "f1"))], "one table")
_ec_wide = _ec([_seq("t0", 6, 33, ("f0",)), _seq("t1", 5, 33, ("f1",))], "D=33")
_ec_builds = [_ec_shared, _ec_plain, _ec_wide]
GOLDEN.append(_ec([_seq("t0", 7, 3, ("f0", "f1")), _seq("t1", 5, 3, ("f1",))], "EmbeddingCollection",
                  need_indices=True))
RECORDS += standard("EmbeddingCollection", _ec_builds, [_ec_shared], _ec_builds, EC_SPEC, "EmbeddingCollection.npz")
RECORDS += [
    *[Record("EmbeddingCollection", f"fused_{rule}_steps", "autograd", "jagged_small", (_ec_shared,),
             ec.check_fused_steps, FUSED_SPEC, data=(rule,)) for rule in ("sgd", "adagrad", "rowwise_adagrad")],
    Record("EmbeddingCollection", "rows_are_table_rows", "invariant", "jagged", tuple(_ec_builds), ec.check_ec_rows,
           EC_SPEC + "; duplicate ids give repeated rows; an all-empty feature gives values [0, D]"),
    Record("EmbeddingCollection", "key_order", "invariant", "jagged", (_ec_shared,), ec.check_key_order,
           "sem. 7.3 / 7.2: extra KJT keys ignored; KJT key order irrelevant"),
    errors("EmbeddingCollection", [
        JaggedError("tables of different embedding_dim", _ec([_seq("a", 5, 3, ("f",)), _seq("b", 5, 4, ("g",))], "3,4"),
                    ValueError, r"embedding_dim", ("3", "4")),
        JaggedError("feature a table needs missing", _ec_plain, ValueError, r"f1", ("f1", "t0"),
                    batch(["f0"], [1], [0])),
        JaggedError("id = num_embeddings", _ec_plain, IndexError, r"f0", ("f0", "t0", "9"),
                    batch(["f0", "f1"], [1, 0], [9])),
        JaggedError("negative id", _ec_plain, IndexError, r"f1", ("f1", "t0", "-2"), batch(["f0", "f1"], [0, 1], [-2])),
        JaggedError("lengths do not sum to the values", _ec_plain, ValueError, r"lengths|offsets|values", ("1", "3"),
                    batch(["f0", "f1"], [1, 0], [0, 1, 2])),
    ], "sem. 7.3: all tables must share embedding_dim (ValueError); CONTRACT: missing features and ids outside "
       "[0, num_embeddings) raise errors naming the feature and the table"),
    discrepancy("EmbeddingCollection", "D14_embedding_names", dd.check_d14,
                'page: EmbeddingCollection(tables, device, need_indices), output "Dict[str, JaggedTensor]" keyed by '
                "feature; sem. 16 D14: use_gather_select args; keys are embedding names (f@t when shared)", "D14"),
]

# --- PositionWeightedModule / PositionWeightedProcessor ---------------------------------------
PWM_SPEC = ("sem. 8.1: for each key of max_feature_lengths, weights = p_f[pos], pos = offsets_range(offsets, "
            "numel) (the position in the bag); other keys untouched; params position_weights.f [max_len], ones")
_pwm = Build("PositionWeightedModule", ((("f0", 40), ("f1", 3)),), reduction=1, label="f0:40, f1:3")
GOLDEN.append(Build("PositionWeightedModule", ((("f0", 4), ("f1", 3)),), reduction=1, label="PositionWeightedModule"))
RECORDS += standard("PositionWeightedModule", [_pwm], [_pwm], [_pwm], PWM_SPEC, "PositionWeightedModule.npz")
RECORDS += [
    Record("PositionWeightedModule", "weights_are_position_weights", "invariant", "jagged", (_pwm,),
           ec.check_position_weights, PWM_SPEC),
    errors("PositionWeightedModule", [
        JaggedError("position past max length", _pwm, IndexError, r"f1", ("f1", "3"),
                    batch(["f0", "f1"], [0, 4], [1, 2, 3, 4])),
        JaggedError("feature missing", _pwm, ValueError, r"f1", ("f1",), batch(["f0"], [1], [1])),
        JaggedError("negative max length", Build("PositionWeightedModule", ((("f", -1),),)), ValueError,
                    r"max_feature_lengths", ("-1",)),
    ], "sem. 8.1: missing feature -> KeyError; position >= max_len fails (TorchRec: RuntimeError in the gather; "
       "recspec: IndexError naming the feature)"),
    discrepancy("PositionWeightedModule", "D15_feature_processor_names", dd.check_d15,
                'page example: "FeatureProcessorCollection(... PositionWeightedFeatureProcessor(max_feature_length=100))"'
                "; sem. 16 D15: neither name exists", "D15"),
    discrepancy("PositionWeightedModule", "D16_returns_the_input_dict", dd.check_d16,
                'page: "same as input features with weights populated"; sem. 16 D16: the same dict object, mutated; '
                "PositionWeightedProcessor drops non-fp keys; length <= 0 -> RuntimeError", "D16"),
]

PWP_SPEC = ("sem. 8.2: positions = offsets_range(offsets, numel) (KJT without weights); non-fp keys dropped; "
            "weights = cat_k p_k[pos_k]; params position_weights.f [len], ones")
_pwp = Build("PositionWeightedProcessor", ((("f0", 40), ("f1", 3)),), reduction=1, label="f0:40, f1:3")
RECORDS += standard("PositionWeightedProcessor", [_pwp], [_pwp], [_pwp], PWP_SPEC)
RECORDS += [
    Record("PositionWeightedProcessor", "weights_are_position_weights", "invariant", "jagged", (_pwp,),
           ec.check_position_weights, PWP_SPEC),
    errors("PositionWeightedProcessor", [
        JaggedError("max length 0", Build("PositionWeightedProcessor", ((("f", 0),),)), ValueError,
                    r"max_feature_lengths", ("0",)),
        JaggedError("position past max length", _pwp, IndexError, r"f1", ("f1", "3"),
                    batch(["f0", "f1"], [0, 4], [1, 2, 3, 4])),
    ], "sem. 8.2: any length <= 0 -> RuntimeError in TorchRec (recspec: ValueError naming max_feature_lengths)"),
]

# --- towers ------------------------------------------------------------------------------------
TOWER_SPEC = ("sem. 13: EmbeddingTower forward = interaction(embedding(*a)); EmbeddingTowerCollection: per tower "
              "features / weighted_features by tower_input_params, outputs concatenated along dim 1")
_tower_ebc = _ebc([_bag("t0", 7, 3, ("f0", "f1"))], "tower ebc", weighted=True)
_tower = Build("EmbeddingTower", (_tower_ebc, Build("KeyedLinear", (6, 2))), reduction=LONGEST + 6,
               label="weighted EBC + linear")
_tower_u = Build("EmbeddingTower", (_ebc([_bag("a", 7, 3, ("f0",), pooling="MEAN")], "unweighted"),
                                    Build("KeyedLinear", (3, 2))))
_tower_w = Build("EmbeddingTower", (_ebc([_bag("b", 6, 2, ("f1",))], "weighted", weighted=True),
                                    Build("KeyedLinear", (2, 3))))
_towers = Build("EmbeddingTowerCollection", ((_tower_u, _tower_w),), reduction=LONGEST + 3,
                label="unweighted + weighted towers")
RECORDS += standard("EmbeddingTower", [_tower], [_tower], [_tower], TOWER_SPEC)
RECORDS += standard("EmbeddingTowerCollection", [_towers], [_towers], [_towers], TOWER_SPEC)
