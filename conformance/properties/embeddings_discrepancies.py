"""Demonstrations of the embedding entries of the discrepancy ledger (D12-D16, D31, D33, D34).

Each check runs on refimpl and the package under test; against TorchRec it demonstrates
TorchRec's half of the discrepancy instead (what TorchRec does that recspec does not), so a
discrepancy record passes on either side exactly while its ledger entry holds.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, List

import numpy as np

from conformance import tolerances
from conformance.compare import Errors
from conformance.properties import embeddings_io as io
from conformance.properties.embeddings_checks import ebc_formula, outcome_of, sides
from conformance.records import Build, Record
from conformance.runner import Context, Outcome


def _configs(package: str) -> Any:
    name = "torchrec.modules.embedding_configs" if package == "torchrec" else f"{package}.modules.embedding_configs"
    return importlib.import_module(name)


def _raises(call: Any, exception: type, pattern: str = "") -> str:
    """'' when call() raises `exception` whose message contains `pattern`, else what happened."""
    try:
        call()
    except exception as exc:
        return "" if pattern in str(exc) else f"{type(exc).__name__}({exc}) does not mention {pattern!r}"
    except Exception as exc:  # the wrong exception is the finding
        return f"raised {type(exc).__name__}({exc}), expected {exception.__name__}"
    return f"raised nothing, expected {exception.__name__}"


def check_d12(record: Record, ctx: Context) -> Outcome:
    """recspec: init_fn stays None and equal configs compare equal; TorchRec: init_fn is a
    partial(uniform_) frozen at construction and equal fields compare unequal. Both: the page's
    `pruning_indices_remapping` field does not exist (TypeError)."""
    problems: List[str] = []
    for package in sides(record, ctx):
        cfg = _configs(package)
        a, b = (cfg.EmbeddingBagConfig(10, 4, name="t", feature_names=["f"]) for _ in range(2))
        if package == "torchrec":
            if a == b or not isinstance(a.init_fn, functools.partial):
                problems.append(f"torchrec: equal configs compare {a == b}, init_fn {a.init_fn!r}")
        elif a != b or a.init_fn is not None:
            problems.append(f"{package}: equal configs compare {a == b}, init_fn {a.init_fn!r}")
        problem = _raises(lambda: cfg.EmbeddingBagConfig(10, 4, pruning_indices_remapping=None), TypeError,
                          "pruning_indices_remapping")
        if problem:
            problems.append(f"{package}: {problem}")
    return outcome_of(problems, 2 * len(sides(record, ctx)))


def _page_ebc() -> Build:
    return Build("EmbeddingBagCollection", ((io.table("EmbeddingBagConfig", "t1", 10, 3, ("f1",)),
                                             io.table("EmbeddingBagConfig", "t2", 10, 4, ("f2",))),))


def check_d13(record: Record, ctx: Context) -> Outcome:
    """The page's example: KJT offsets [0,2,2,3,4,5,8] give a 2-D values (3, 7) (not [B * (F * D)]),
    offset_per_key() is the Python list [0, 3, 7] (not a tensor), and row 1 of f1 is zeros."""
    build = _page_ebc()
    pair = io.make_pair(build, seed=ctx.seed, dtype=np.float32, package=ctx.against, device=ctx.device)
    b = io.batch(["f1", "f2"], [2, 0, 1, 1, 1, 3], [0, 1, 2, 3, 4, 5, 6, 7])
    problems = []
    for package in sides(record, ctx):
        module = pair.ref if package == "refimpl" else pair.other
        args, _ = io.module_input(build, b, package, np.float32, ctx.device)
        kt = module(*args)
        values = io._np(kt.values())
        opk = kt.offset_per_key()
        if values.shape != (3, 7) or type(opk) is not list or opk != [0, 3, 7] or np.any(values[1, :3] != 0):
            problems.append(f"{package}: values shape {values.shape}, offset_per_key {opk!r} "
                            f"({type(opk).__name__}), row 1 of f1 {values[1, :3].tolist()}")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d14(record: Record, ctx: Context) -> Outcome:
    """EmbeddingCollection takes TorchRec 1.8's use_gather_select(_per_sharding), and a feature in
    tables a and b gives outputs named 'f@a', 'f@b' (embedding names, not feature names)."""
    build = Build("EmbeddingCollection", ((io.table("EmbeddingConfig", "a", 5, 2, ("f",)),
                                           io.table("EmbeddingConfig", "b", 5, 2, ("f",))),),
                  (("use_gather_select", False), ("use_gather_select_per_sharding", None)))
    pair = io.make_pair(build, seed=ctx.seed, dtype=np.float32, package=ctx.against, device=ctx.device)
    b = io.batch(["f"], [1, 2], [0, 3, 4])
    problems = []
    for package in sides(record, ctx):
        module = pair.ref if package == "refimpl" else pair.other
        keys, _ = io.run(module, build, b, package, np.float32, ctx.device)
        if keys != ["f@a", "f@b"]:
            problems.append(f"{package}: output keys {keys}, expected ['f@a', 'f@b']")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d15(record: Record, ctx: Context) -> Outcome:
    """The page's FeatureProcessorCollection and PositionWeightedFeatureProcessor do not exist in
    feature_processor; PositionWeightedModule does."""
    problems = []
    for package in sides(record, ctx):
        module = importlib.import_module(f"{package}.modules.feature_processor")
        present = [n for n in ("FeatureProcessorCollection", "PositionWeightedFeatureProcessor") if hasattr(module, n)]
        if present or not hasattr(module, "PositionWeightedModule"):
            problems.append(f"{package}: has {present}; PositionWeightedModule present: "
                            f"{hasattr(module, 'PositionWeightedModule')}")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d16(record: Record, ctx: Context) -> Outcome:
    """PositionWeightedModule returns the dict it was given, updated (other keys untouched);
    PositionWeightedProcessor drops the keys it does not weight; a max length of 0 for the
    processor is a ValueError naming max_feature_lengths (TorchRec: RuntimeError 'No active
    exception to reraise')."""
    module_build = Build("PositionWeightedModule", ((("f1", 3),),))
    processor_build = Build("PositionWeightedProcessor", ((("f1", 4),),))
    b = io.batch(["f0", "f1", "f2"], [1, 1, 2, 0, 1, 2], [1, 2, 3, 4, 5, 6, 7])
    problems = []
    for package in sides(record, ctx):
        pwm = io.construct(module_build, package, seed=ctx.seed)
        (features,), _ = io.module_input(module_build, b, package, np.float32)
        untouched = features["f0"]
        out = pwm(features)
        if out is not features or out["f0"] is not untouched or out["f1"].weights_or_none() is None:
            problems.append(f"{package}: PositionWeightedModule returned the input dict: {out is features}, "
                            f"f0 untouched: {out['f0'] is untouched}")
        pwp = io.construct(processor_build, package, seed=ctx.seed)
        (kjt,), _ = io.module_input(processor_build, b, package, np.float32)
        keys = list(pwp(kjt).keys())
        if keys != ["f1"]:
            problems.append(f"{package}: PositionWeightedProcessor output keys {keys}, expected ['f1']")
        zero = Build("PositionWeightedProcessor", ((("f1", 0),),))
        if package == "torchrec":
            problem = _raises(lambda: io.construct(zero, package), RuntimeError, "No active exception")
        else:
            problem = _raises(lambda: io.construct(zero, package), ValueError, "max_feature_lengths")
        if problem:
            problems.append(f"{package}: max length 0: {problem}")
    return outcome_of(problems, 3 * len(sides(record, ctx)))


def _storage_dtype(module: Any, package: str, key: str) -> str:
    value = module.state_dict()[key]
    return str(value.dtype).replace("torch.", "")


def check_d31(record: Record, ctx: Context) -> Outcome:
    """A BF16 table is stored as bfloat16 (torch.bfloat16 in accel, ml_dtypes.bfloat16 in refimpl),
    an FP16 table as float16, and the pooled output is float32 (refimpl: its own dtype);
    TorchRec stores the BF16 table as float16."""
    tabs = (io.table("EmbeddingBagConfig", "b", 6, 2, ("f",), data_type="BF16"),
            io.table("EmbeddingBagConfig", "h", 6, 2, ("g",), data_type="FP16"))
    build = Build("EmbeddingBagCollection", (tabs,))
    b = io.batch(["f", "g"], [1, 2, 0, 1], [1, 2, 3, 4])
    problems = []
    for package in sides(record, ctx):
        module = io.construct(build, package, seed=ctx.seed)
        bf16 = _storage_dtype(module, package, "embedding_bags.b.weight")
        fp16 = _storage_dtype(module, package, "embedding_bags.h.weight")
        want = "float16" if package == "torchrec" else "bfloat16"
        if bf16 != want or fp16 != "float16":
            problems.append(f"{package}: BF16 table stored as {bf16} (expected {want}), FP16 as {fp16}")
        if package != "refimpl":
            args, _ = io.module_input(build, b, package, np.float32, ctx.device)
            out = module.to(ctx.device)(*args).values()
            if str(out.dtype) != "torch.float32":
                problems.append(f"{package}: output dtype {out.dtype}, expected torch.float32")
    return outcome_of(problems, 2 * len(sides(record, ctx)))


def check_d33(record: Record, ctx: Context) -> Outcome:
    """A batch of size 0: recspec's EBC gives values (0, sum D) and its EC empty JaggedTensors
    (values (0, D), lengths (0,)); TorchRec raises IndexError for both (KJT.to_dict)."""
    ebc = Build("EmbeddingBagCollection", ((io.table("EmbeddingBagConfig", "t0", 5, 3, ("f0", "f1")),
                                            io.table("EmbeddingBagConfig", "t1", 5, 2, ("f1",),
                                                     pooling="MEAN")),))
    ec = Build("EmbeddingCollection", ((io.table("EmbeddingConfig", "t0", 5, 3, ("f0", "f1")),),))
    empty = io.batch(["f0", "f1"], [], [], stride=0)
    problems = []
    for package in sides(record, ctx):
        for build, want in ((ebc, {"out": (0, 8)}),
                            (ec, {"values[f0]": (0, 3), "lengths[f0]": (0,), "values[f1]": (0, 3),
                                  "lengths[f1]": (0,)})):
            module = io.construct(build, package, seed=ctx.seed)
            if package == "torchrec":
                problem = _raises(lambda: io.run(module, build, empty, package, np.float32), IndexError)
                if problem:
                    problems.append(f"torchrec {build.module}: {problem}")
                continue
            try:
                _, got = io.run(module, build, empty, package, np.float32 if package != "refimpl" else np.float64)
            except Exception as exc:  # the failure is the finding
                problems.append(f"{package} {build.module}: B=0 raised {type(exc).__name__}({exc})")
                continue
            shapes = {k: v.shape for k, v in got.items()}
            if shapes != want:
                problems.append(f"{package} {build.module}: B=0 gives {shapes}, expected {want}")
    return outcome_of(problems, 2 * len(sides(record, ctx)))


def check_d34(record: Record, ctx: Context) -> Outcome:
    """Weighted MEAN: recspec's weighted EBC with a MEAN table gives sum_j w_j W[i_j] / L (the
    formula written out in embeddings_checks.ebc_formula); TorchRec raises NotImplementedError."""
    build = Build("EmbeddingBagCollection", ((io.table("EmbeddingBagConfig", "t", 5, 2, ("f",), pooling="MEAN"),),),
                  (("is_weighted", True),))
    b = io.batch(["f"], [2, 0, 3], [0, 1, 2, 2, 4], weights=[0.5, 2.0, 1.0, -1.5, 4.0])
    pair = io.make_pair(build, seed=ctx.seed, dtype=np.float64 if ctx.against != "torchrec" else np.float32,
                        package=ctx.against, device=ctx.device)
    errors, problems = Errors(), []
    for package in sides(record, ctx):
        if package == "torchrec":
            problem = _raises(lambda: io.run(pair.other, build, b, package, np.float32), NotImplementedError)
            if problem:
                problems.append(f"torchrec: {problem}")
            continue
        module = pair.reference64() if package == "refimpl" else pair.other
        _, got = io.run(module, build, b, package, np.float64, ctx.device)
        errors.add(package, "out", got["out"], ebc_formula(build, pair.state, b, True), tolerances.forward64(3))
    if errors.failed and errors.worst is not None:
        problems.append(errors.worst.explain())
    return Outcome("FAIL" if problems else "PASS", len(sides(record, ctx)), errors if errors.comparisons else None,
                   "; ".join(problems))
