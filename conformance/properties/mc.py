"""The managed-collision properties: MCHManagedCollisionModule, its eviction policies and threshold
filters, ManagedCollisionCollection, the MC embedding collections, ManagedCollisionModule and
apply_mc_method_to_jt_dict.

Everything is compared exactly (ids are int64): every remapped id, every evict() result and
every state_dict entry after every step of a stream (mc_streams), sem. 14's vectors (mc_vectors),
invariants over random streams, bad input and the ledger's demonstrations (mc_discrepancies).
Ids carry no float dtype, so every record runs against TorchRec too (`dtypes` lists float32),
except where recspec deviates from TorchRec on purpose (ledger D30, D35-D41): those streams
run on refimpl and accel only, and the discrepancy records run TorchRec's side.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from conformance.properties import mc_checks as mk
from conformance.properties import mc_discrepancies as md
from conformance.properties import mc_invariants as mi
from conformance.properties import mc_streams as ms
from conformance.properties import mc_vectors as mv
from conformance.properties import mc_wrapped as mw
from conformance.properties.mc_checks import MCError
from conformance.properties.mc_io import (
    EVICT,
    MAX,
    MCH,
    Filter,
    Step,
    Stream,
    Table,
    Tables,
    Wrapped,
    forward,
)
from conformance.records import Record

BOTH = ("float32", "float64")  # ids are int64: the dtype does not matter; float32 lets TorchRec run them
RANDOM_STREAMS = 8  # per record and package: the whole MC set stays within seconds
POLICY_PREFIX = {"LFU_EvictionPolicy": "LFU", "LRU_EvictionPolicy": "LRU", "DistanceLFU_EvictionPolicy": "Distance"}

MCH_SPEC = ("sem. 11.3: out = remap(profile(preprocess(ids))): hashing, history of I training batches, an eviction "
            "round (coalesce, policy scores, stable argsort, pairwise replacement, re-sort) every I-th training call, "
            "then out = map[pos] if raw[pos] == id else off + Z - 1; evict() returns the output ids that changed "
            "owner since the last call, or None")
TABLE_SPEC = ("issue 4 item 5 / sem. 11.3: the table stays sorted with no duplicate real ids; at most Z - 1 ids are "
              "managed and the last slot (output off + Z - 1) is the sentinel, the shared miss id")


def record(module: str, prop: str, kind: str, generator: str, check: Any, spec: str, data: Sequence[Any] = (),
           sides: Sequence[str] = ("refimpl", "accel"), discrepancy: Optional[str] = None) -> Record:
    return Record(module, prop, kind, generator, (), check, spec, discrepancy=discrepancy,
                  sides=tuple(sides), dtypes=BOTH, data=tuple(data))


def discrepancy(module: str, ident: str, name: str, check: Any, spec: str) -> Record:
    return record(module, f"{ident}_{name}", "discrepancy", "hand-written demonstration", check, spec,
                  discrepancy=ident)


def invariant(prop: str, which: Sequence[str], spec: str, **options: Any) -> Record:
    return record("MCHManagedCollisionModule", prop, "invariant", "random streams (mc_streams.streams)",
                  mi.check_invariants, spec, (RANDOM_STREAMS, tuple(which), tuple(options.items())))


def _vectors(prefix: Sequence[str]) -> tuple:
    return tuple(v for v in mv.VECTORS if v.name.startswith(tuple(prefix)))


RECORDS: List[Record] = []

# --- MCHManagedCollisionModule ---------------------------------------------------------------------
_M5 = MCH(5)
RECORDS += [
    record("MCHManagedCollisionModule", "forward", "forward", "named streams (mc_streams.NAMED)", mk.check_streams,
           MCH_SPEC, tuple(s for s in ms.NAMED if not s.name.startswith(tuple(POLICY_PREFIX.values())))),
    record("MCHManagedCollisionModule", "forward[random streams]", "forward", "random streams (mc_streams.streams)",
           mk.check_random_streams, MCH_SPEC + "; any eviction interval, hashing on or off, any deterministic filter",
           (RANDOM_STREAMS,)),
    record("MCHManagedCollisionModule", "forward[large tables]", "forward", "mc_streams.large_streams(4)",
           mk.check_streams, MCH_SPEC + "; tables of 20 to 600 slots, batches of up to 800 Zipf-distributed ids",
           ms.large_streams(4)),
    record("MCHManagedCollisionModule", "forward[growing window]", "forward", "named streams (GROWING_WINDOW)",
           mk.check_deviation_streams, "issue 4 item 4 / ledger D37: the history window grows instead of dropping "
           "ids; an empty first batch does not disable learning", ms.GROWING_WINDOW),
    record("MCHManagedCollisionModule", "sem14_vectors", "golden", "sem. 14 TV8, TV9, TV11, TV12 (data)",
           mk.check_vectors, "sem. 14: hashing x mod 7 with offset 100 (TV8), eval (TV9), two features in one dict "
           "(TV11), pending evictions union (TV12), produced by TorchRec 1.8.0", _vectors(("TV8", "TV9", "TV11",
                                                                                            "TV12"))),
    invariant("table_sorted_unique", ("table",), TABLE_SPEC + "; open_slots() = Z - 1 - #managed"),
    invariant("outputs_in_range", ("outputs",), "issue 4 item 5 / sem. 11.3 remap: every output id lies in "
              "[off, off + Z) and equals the lookup in the table after the step (misses give off + Z - 1)"),
    invariant("resident_stable", ("resident",), "issue 4 item 5 / sem. 11.3 step 12: an id in the table keeps its "
              "output id until it is evicted (map is never changed, the new owner inherits the slot's id)"),
    invariant("lfu_never_evicts_for_lower_count", ("lfu",), "issue 4 item 5 / sem. 11.3 steps 7-12: LFU replaces a "
              "resident only by a candidate whose count is strictly higher (residents win ties); admitted counts "
              "are the window's counts, residents' counts grow by them", policies=(ms.LFU,)),
    invariant("eval_never_changes_state", ("eval",), "issue 4 item 5 / sem. 11.3 profile: in eval mode forward is a "
              "pure lookup (no state change, iteration not advanced); evict(), train(), eval() and remap() change "
              "no state_dict entry"),
    invariant("invariants[probabilistic filter]", mi.INVARIANTS, TABLE_SPEC + "; the same invariants with the "
              "probabilistic filter, whose draws differ between packages", probabilistic=True),
    record("MCHManagedCollisionModule", "state_dict_continues", "invariant", "random streams (mc_streams.streams)",
           mi.check_checkpoint, "issue 4 item 5 / sem. 11.3 State dict: a state_dict saved after an eviction round "
           "and loaded into a fresh module continues the stream identically", (RANDOM_STREAMS,)),
    record("MCHManagedCollisionModule", "bad_input", "error", "hand-written bad inputs", mk.check_errors,
           "issue 4 item 6: non-int64 ids, the reserved id 2^63 - 1, zch_size < 2, eviction_interval < 1 and a hash "
           "outside [0, input_hash_size) raise TypeError/ValueError naming the argument, before any state changes", (
               MCError("int32 ids", Stream("", _M5, (forward([1, 2]),)), forward([3, 3], dtype="int32"), TypeError,
                       r"int64[\s\S]*int32|int32[\s\S]*int64", follow=(forward([3, 4]), EVICT)),
               MCError("float ids", Stream("", _M5, (forward([1, 2]),)), forward([3, 3], dtype="float64"), TypeError,
                       r"int64[\s\S]*float64|float64[\s\S]*int64", follow=(forward([3, 4]), EVICT)),
               MCError("id 2^63 - 1 in a second feature", Stream("", _M5, (forward([1, 2]),)),
                       Step("forward", (("a", (3, 4), (2,)), ("b", (5, MAX), (1, 1)))), ValueError,
                       r"2\*\*63 - 1|2\^63 - 1|9223372036854775807", follow=(forward([3, 4]), EVICT)),
               MCError("hash outside [0, input_hash_size)", Stream("", MCH(5, hash="shifted", hash_size=7), ()),
                       forward([3]), ValueError, r"input_hash", ("7", "10")),
               MCError("zch_size 1", Stream("", MCH(1), ()), None, ValueError, r"zch_size", ("2", "1")),
               MCError("zch_size 0", Stream("", MCH(0), ()), None, ValueError, r"zch_size", ("0",)),
               MCError("eviction_interval 0", Stream("", MCH(4, interval=0), ()), None, ValueError,
                       r"eviction_interval", ("1", "0")),
           )),
    discrepancy("MCHManagedCollisionModule", "D22", "input_hash_size_default", md.check_d22,
                'page: "input_hash_size: int = 9223372036854775808"; sem. 16 D22: the default is 2^63 - 1'),
    discrepancy("MCHManagedCollisionModule", "D23", "output_range", md.check_d23,
                'page: "zch_size (int) - range of output ids, within [output_size_offset, output_size_offset + '
                'zch_size - 1)"; sem. 16 D23: outputs in [off, off + Z - 1] inclusive, off + Z - 1 the miss id'),
    discrepancy("MCHManagedCollisionModule", "D24", "mch_size_ignored", md.check_d24,
                'page: "mch_size - size of residual output ... Ids are internally shifted"; sem. 16 D24: ignored'),
    discrepancy("MCHManagedCollisionModule", "D25", "method_signatures", md.check_d25,
                'page: "rebuild_with_output_id_range(output_id_range, device=None)"; sem. 16 D25: TorchRec needs '
                "output_segments; forward/remap take mutate_miss_lengths"),
    discrepancy("MCHManagedCollisionModule", "D26", "eviction_interval_message", md.check_d26,
                'page: "eviction_interval (int) - interval of eviction"; sem. 16 D26: 0 -> AssertionError '
                '"eviction_interval must be > 1" although 1 is accepted'),
    discrepancy("MCHManagedCollisionModule", "D32", "range_starts_at_offset", md.check_d32,
                'page (ManagedCollisionModule): "Maps input ids to range [0, max_output_id)"; '
                "sem. 16 D32: [off, off + Z)"),
    discrepancy("MCHManagedCollisionModule", "D37", "history_window", md.check_d37,
                "sem. 11.3 profile steps 3-4 / 16.1: the history window is sized by the first batch, later ids are "
                "dropped, an empty first batch disables learning (TorchRec); recspec grows the window"),
    discrepancy("MCHManagedCollisionModule", "D39", "ids_refused", md.check_d39,
                "sem. 11.3 remap: int32 ids fail after profiling mutated the state; an id equal to 2^63 - 1 matches "
                "an empty slot; ids are never range-checked (TorchRec). issue 4 item 6: recspec refuses them first"),
    discrepancy("MCHManagedCollisionModule", "D40", "zch_size_one", md.check_d40,
                "sem. 11.3 Validation: zch_size > 0 (TorchRec); Z - 1 ids are managed, so Z = 1 manages none. "
                "issue 4 item 6: recspec requires zch_size >= 2"),
]

# --- eviction policies and filters -------------------------------------------------------------------
POLICY_SPEC = {
    "LFU_EvictionPolicy": "sem. 11.3 step 10 LFU: s = [counts | n_c] (int64); sem. 11.4",
    "LRU_EvictionPolicy": "sem. 11.3 step 10 LRU: s = -(float32(cur - [last | n_la] + 1) ^ decay) ; sem. 11.4",
    "DistanceLFU_EvictionPolicy": ("sem. 11.3 step 10 DistanceLFU: s = float32([counts | n_c]) / float32(cur - "
                                   "[last | n_la] + 1) ^ decay; sem. 11.4"),
}
POLICY_VECTORS = {
    "LFU_EvictionPolicy": ("TV1 ", "TV2 ", "TV15 LFU"),
    "LRU_EvictionPolicy": ("TV3 ", "TV4 ", "TV7 LRU", "TV15 LRU"),
    "DistanceLFU_EvictionPolicy": ("TV5 ", "TV6 ", "TV7 Dist", "TV13 ", "TV15 Dist"),
}
for _name, _spec in POLICY_SPEC.items():
    RECORDS += [
        record(_name, "sem14_vectors", "golden", "sem. 14 vectors (data)", mk.check_vectors,
               _spec + "; sem. 14's step-by-step vectors, produced by TorchRec 1.8.0", _vectors(POLICY_VECTORS[_name])),
        record(_name, "forward", "forward", "named streams of this policy (mc_streams.NAMED)",
               mk.check_streams, _spec, tuple(s for s in ms.NAMED if s.name.startswith(POLICY_PREFIX[_name]))),
    ]

FILTER_COUNTS = ((5, 4, 3, 2, 1), (1,), (7, 7, 7), (100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), (0, 3, 0, 9, 2))
RECORDS += [
    record("dynamic_threshold_filter", "forward", "forward", "hand-written counts", mk.check_filters,
           "sem. 11.1: thr = (1/n) mult sum(c) (float32), mask = c > thr",
           tuple((Filter("dynamic", m), c) for m in (0.75, 1.0, 10.0) for c in FILTER_COUNTS)),
    record("dynamic_threshold_filter", "sem11_vectors", "golden", "sem. 11.1 (data)", mk.check_filter_vectors,
           "sem. 11.1: c=[5,4,3,2,1], mult 0.75 -> thr 2.25, mask [T,T,T,F,F]; default mult 10 -> thr 30, all False",
           ((Filter("dynamic", 0.75), (5, 4, 3, 2, 1), (True, True, True, False, False), 2.25),
            (Filter("dynamic", 10.0), (5, 4, 3, 2, 1), (False,) * 5, 30.0))),
    record("average_threshold_filter", "forward", "forward", "hand-written counts", mk.check_filters,
           "sem. 11.1: thr = mean(c) (float32), mask = c > thr", tuple((Filter("average"), c) for c in FILTER_COUNTS)),
    record("average_threshold_filter", "sem11_vectors", "golden", "sem. 11.1 (data)", mk.check_filter_vectors,
           "sem. 11.1: c=[5,4,3,2,1] -> thr 3.0, mask [T,T,F,F,F]",
           ((Filter("average"), (5, 4, 3, 2, 1), (True, True, False, False, False), 3.0),)),
    discrepancy("dynamic_threshold_filter", "D42", "empty_round", md.check_d42,
                "sem. 11.1: dynamic_threshold_filter with n = 0 -> ZeroDivisionError; an eviction round over an empty "
                "window (I = 1 and an empty batch) calls it with n = 0"),
    discrepancy("probabilistic_threshold_filter", "D27", "pass_rate", md.check_d27,
                'page: "if an id occurs 100 times ... 60% chance"; sem. 11.1 / 16 D27: 1 - 0.99^100 = 0.634'),
]

# --- ManagedCollisionCollection -------------------------------------------------------------------------
MCC_SPEC = ("sem. 11.6: per table (config order), its features' ids go through its MCH; output KJT in config "
            "feature order (unread keys dropped), lengths and weights kept; evict()/open_slots() per table")
_T = Tables((Table("t1", 5, ("f1", "f2")), Table("t2", 4, ("f3",))))
_GOOD = ms.kjt(["f1", "f2", "f3"], [[[1, 2]], [[3]], [[4]]])
RECORDS += [
    record("ManagedCollisionCollection", "forward", "forward", "named streams (mc_streams.COLLECTIONS)",
           mk.check_streams, MCC_SPEC, ms.COLLECTIONS),
    record("ManagedCollisionCollection", "forward[random streams]", "forward",
           "random streams (mc_streams.streams(collection=True))", mk.check_random_streams,
           MCC_SPEC + "; keys in any order with an unread key (recspec maps by key, D35), weights, empty bags",
           (RANDOM_STREAMS, ("collection", True))),
    record("ManagedCollisionCollection", "forward[by key and name]", "forward", "named streams (KEY_ORDER, "
           "MODULE_ORDER)", mk.check_deviation_streams, "issue 4 item 4 / ledger D35, D36: features are mapped by "
           "key on every call and modules paired with tables by name",
           ms.KEY_ORDER[:1] + ms.MODULE_ORDER),
    record("ManagedCollisionCollection", "sem14_vectors", "golden", "sem. 14 TV14 (data)", mk.check_vectors,
           "sem. 14 TV14: keys [f3,f1,x,f2] -> output keys [f1,f2,f3], values [0,1,2,1,1], weights kept",
           tuple(mv.COLLECTION_VECTORS)),
    record("ManagedCollisionCollection", "bad_input", "error", "hand-written bad inputs", mk.check_errors,
           "CONTRACT / issue 4 item 6: a feature the collection needs, missing from the input, raises ValueError "
           "naming it (first call or later), state untouched; every config needs a module", (
               MCError("feature missing on the first call", Stream("", _T, ()),
                       ms.kjt(["f1", "f3"], [[[1]], [[2]]]), ValueError, r"f2", ("f2",), follow=(_GOOD, EVICT)),
               MCError("feature missing after a good call", Stream("", _T, (_GOOD,)),
                       ms.kjt(["f2", "f3"], [[[1]], [[2]]]), ValueError, r"f1", ("f1",), follow=(_GOOD, EVICT)),
               MCError("a table without a module", Stream("", Tables(_T.tables, module_order=("t1",)), ()), None,
                       ValueError, r"t2", ("t2",)),
           )),
    discrepancy("ManagedCollisionCollection", "D28", "embedding_configs_name", md.check_d28,
                'page: "embedding_confgs (List[BaseEmbeddingConfig])"; sem. 16 D28: the argument is embedding_configs'),
    discrepancy("ManagedCollisionCollection", "D35", "features_by_key", md.check_d35,
                "sem. 11.6 forward step 1 / 16.1: the first call's key order is cached and reused without checking"),
    discrepancy("ManagedCollisionCollection", "D36", "modules_by_table_name", md.check_d36,
                "sem. 11.6 forward step 4 / 16.1: feature splits (config order) are paired with modules (dict order)"),
    discrepancy("ManagedCollisionCollection", "D41", "missing_feature_later", md.check_d41,
                "sem. 11.6 forward step 1: a missing feature later -> IndexError from the cached permutation"),
]

# --- the MC embedding collections -----------------------------------------------------------------------
WRAP_SPEC = ("sem. 12: (emb, r) = (embedding_module(r), r), r = mcc(kjt); then evict(mcc.evict(), embedding_module) "
             "(recspec: evicted rows re-initialised, D30)")
_EBC = Tables((Table("t", 5, ("f",), dim=2),))
RECORDS += [
    record("ManagedCollisionEmbeddingBagCollection", "forward", "forward", "named streams (mc_streams.WRAPPED)",
           mk.check_streams, WRAP_SPEC, ms.WRAPPED[:1]),
    record("ManagedCollisionEmbeddingBagCollection", "forward[random streams]", "forward",
           "random streams (mc_streams.streams(collection=True, wrapper=...))", mk.check_random_streams, WRAP_SPEC,
           (RANDOM_STREAMS // 2, ("collection", True), ("wrapper", "EmbeddingBagConfig"))),
    record("ManagedCollisionEmbeddingBagCollection", "forward[keys by name]", "forward", "named streams (KEY_ORDER)",
           mk.check_deviation_streams, "issue 4 item 4 / ledger D35: keys in another order on a later call",
           ms.KEY_ORDER[1:]),
    record("ManagedCollisionEmbeddingBagCollection", "sem14_vectors", "golden", "sem. 14 TV15 (data)",
           mk.check_vectors, "sem. 14 TV15 test_zch_ebc_ec_train: Z=20, I=2, DistanceLFU, remapped ids per call",
           tuple(mv.WRAPPED_VECTORS)),
    record("ManagedCollisionEmbeddingBagCollection", "bad_input", "error", "hand-written bad inputs", mk.check_errors,
           "CONTRACT: a feature the collection needs, missing from the input, raises ValueError naming it", (
               MCError("feature missing", Stream("", Wrapped(_EBC), ()), ms.kjt(["g"], [[[1]]]), ValueError,
                       r"'f'|\bf\b", follow=(ms.kjt(["f"], [[[1, 2]]]),)),
           )),
    discrepancy("ManagedCollisionEmbeddingBagCollection", "D29", "argument_names", md.check_d29,
                'page: "embedding_module - EmbeddingBagCollection ... managed_collision_modules - Dict of managed '
                'collision modules"; sem. 16 D29: embedding_bag_collection, managed_collision_collection'),
    discrepancy("ManagedCollisionEmbeddingBagCollection", "D30", "evict_reinitialises", md.check_d30,
                'page (MCH.evict): "module should reset its state for those slots"; sem. 12 / 16 D30: evict is a '
                "no-op, reassigned slots keep the old rows"),
    discrepancy("ManagedCollisionEmbeddingBagCollection", "D38", "equal_configs", md.check_d38,
                "sem. 12 / 16.1: the wrappers require the same config objects (configs compare by init_fn identity)"),
    record("ManagedCollisionEmbeddingCollection", "forward", "forward", "named streams (mc_streams.WRAPPED)",
           mk.check_streams, WRAP_SPEC + "; emb is a dict of JaggedTensors", ms.WRAPPED[1:]),
    record("ManagedCollisionEmbeddingCollection", "forward[random streams]", "forward",
           "random streams (mc_streams.streams(collection=True, wrapper=...))", mk.check_random_streams,
           WRAP_SPEC + "; emb is a dict of JaggedTensors",
           (RANDOM_STREAMS // 2, ("collection", True), ("wrapper", "EmbeddingConfig"))),
]

# --- the base class and the helpers ----------------------------------------------------------------------
RECORDS += [
    record("evict", "reinitialises_rows", "forward", "hand-written evictions", mw.check_evict_function,
           "issue 4 item 4 / ledger D30: mc_embedding_modules.evict(evictions, collection) re-initialises the rows "
           "of the evicted output ids of each table with the table's init (TorchRec: a no-op)"),
    record("evict", "bad_input", "error", "hand-written evictions", mw.check_evict_errors,
           "CONTRACT: a table the collection does not have (ValueError) or an id outside [0, num_embeddings) "
           "(IndexError or ValueError), naming the table, before any row changes"),
    discrepancy("ManagedCollisionModule", "D21", "constructor", md.check_d21,
                'page: "ManagedCollisionModule(device)" with max_output_id, input_hash_size, '
                "remapping_range_start_index; sem. 16 D21: (device, output_segments, ...)"),
    discrepancy("apply_mc_method_to_jt_dict", "D20", "signature", md.check_d20,
                'page: "apply_mc_method_to_jt_dict(method, features_dict, table_to_features, managed_collisions)"; '
                "sem. 11.7 / 16 D20: (mc_module, method, features_dict)"),
]
