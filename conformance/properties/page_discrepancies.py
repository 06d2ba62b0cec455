"""Demonstrations of the page's remaining ledger entries: DeepFM's example and shapes text (D6, D7),
lazy_apply (D17), the utils names TorchRec lacks (D18) and construct_jagged_tensors' signatures (D19).

Each check runs on refimpl and the package under test (accel, or TorchRec with `--against
torchrec`); lazy_extension exists in the torch packages only, so D17 runs on the package under
test alone. A discrepancy record passes while its ledger entry holds, on either side.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Dict, List, Sequence, Tuple, Type, Union

import numpy as np

from conformance import adapters, tolerances
from conformance.compare import Errors
from conformance.properties.embeddings_checks import outcome_of, sides
from conformance.records import Build, Record
from conformance.runner import FAIL, PASS, Context, Outcome


def _module(package: str, file: str) -> Any:
    return importlib.import_module(f"{package}.modules.{file}")


def _raises(call: Callable[[], Any], exception: Union[Type[BaseException], Tuple[Type[BaseException], ...]],
            pattern: str = "") -> str:
    """'' when call() raises `exception` whose message contains `pattern`, else what happened."""
    try:
        call()
    except exception as exc:
        return "" if pattern in str(exc) else f"{type(exc).__name__}({exc}) does not mention {pattern!r}"
    except Exception as exc:  # the wrong exception is the finding
        return f"raised {type(exc).__name__}({exc}), expected {exception}"
    return f"raised nothing, expected {exception}"


def _forward64(module: Any, package: str, xs: Sequence[np.ndarray], ctx: Context) -> np.ndarray:
    """module(xs) in float64 (torch modules cast with .double(), on the context's device)."""
    if package == "refimpl":
        return np.asarray(module([np.asarray(x, dtype=np.float64) for x in xs]))
    import torch

    module = module.to(device=ctx.device, dtype=torch.float64)
    with torch.no_grad():
        return adapters.to_numpy(module(adapters.to_torch(list(xs), np.float64, ctx.device)))


def _flat_concat(xs: Sequence[np.ndarray]) -> np.ndarray:
    """concat_i flatten(x_i) per row: the (B, sum_i prod(shape_i[1:])) input of dense_module."""
    return np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=1)


def _deepfm_formula(module: Any, xs: Sequence[np.ndarray]) -> np.ndarray:
    """DeepFM(x) = W . concat_i flatten(x_i) + b with dense_module = Linear(W, b)."""
    state = {k: np.asarray(adapters.to_numpy(v) if hasattr(v, "detach") else v, dtype=np.float64)
             for k, v in module.state_dict().items()}
    return _flat_concat(xs) @ state["dense_module.weight"].T + state["dense_module.bias"]


def _outcome(errors: Errors, problems: List[str], cases: int) -> Outcome:
    """FAIL on any problem or comparison past its tolerance; the row shows the tightest-bound tolerance."""
    if errors.failed and errors.worst is not None:
        problems = problems + [errors.worst.explain()]
    worst = errors.worst
    return Outcome(FAIL if problems else PASS, cases, errors, "; ".join(problems),
                   worst.tolerance.value if worst is not None else float("nan"),
                   worst.tolerance.unit if worst is not None else "")


# --- D6: the DeepFM example ------------------------------------------------------------------------
PAGE_DEEPFM = Build("DeepFM", kwargs=(("dense_module", Build("Linear", (192, 30))),))
PAGE_DEEPFM_SHAPES = ((3, 2, 64), (3, 2, 32))  # the example's input_embeddings; 2*64 + 2*32 = 192


def check_d6(record: Record, ctx: Context) -> Outcome:
    """The page imports DeepFM from `<package>.fb.modules.deepfm` and LazyMLP from `.fb.modules.mlp`:
    neither module exists (ModuleNotFoundError) and mlp has no LazyMLP; DeepFM lives in
    `<package>.modules.deepfm`, where the example (nn.Linear(192, 30) on (3, 2, 64) and (3, 2, 32))
    gives W . concat(flatten) + b of shape (3, 30)."""
    rng = np.random.default_rng(ctx.seed)
    xs = [rng.standard_normal(shape) for shape in PAGE_DEEPFM_SHAPES]
    errors, problems = Errors(), []
    for package in sides(record, ctx):
        for path in (f"{package}.fb.modules.deepfm", f"{package}.fb.modules.mlp"):
            problem = _raises(lambda path=path: importlib.import_module(path), ModuleNotFoundError, f"{package}.fb")
            if problem:
                problems.append(f"{package}: import {path}: {problem}")
        if hasattr(_module(package, "mlp"), "LazyMLP") or not hasattr(_module(package, "deepfm"), "DeepFM"):
            problems.append(f"{package}: mlp has LazyMLP: {hasattr(_module(package, 'mlp'), 'LazyMLP')}, "
                            f"deepfm has DeepFM: {hasattr(_module(package, 'deepfm'), 'DeepFM')}")
            continue
        module = adapters.construct(PAGE_DEEPFM, package, seed=ctx.seed)
        got = _forward64(module, package, xs, ctx)
        errors.add(f"{package}:page example", "output", got, _deepfm_formula(module, xs), tolerances.forward64(192))
    return _outcome(errors, problems, 4 * len(sides(record, ctx)))


# --- D7: the shapes text of DeepFM and FactorizationMachine ---------------------------------------
# The text's stack: 1 trained embedding (dim 32), 5 native (dim 64), 3 dense features "with
# embedding_dim=32" but printed as tensor(B, 3, 16).
STACK_DIM32 = ((1, 32), (5, 64), (3, 32))  # 32 + 320 + 96 = 448 scalars per row
STACK_PRINTED = ((1, 32), (5, 64), (3, 16))  # 32 + 320 + 48 = 400
STACK_DIM32_WIDTH = 448


def check_d7(record: Record, ctx: Context) -> Outcome:
    """With embedding_dim 32 the text's stack has 1*32 + 5*64 + 3*32 = 448 scalars per row: FM maps it
    to [B, 1] (the sum over pairs of those scalars) and DeepFM with dense_module Linear(448, 1) to
    W . concat + b; the printed tensor(B, 3, 16) makes 400 scalars, which that DeepFM rejects."""
    B = 2
    rng = np.random.default_rng(ctx.seed)
    stack = [rng.standard_normal((B,) + s) for s in STACK_DIM32]
    printed = [rng.standard_normal((B,) + s) for s in STACK_PRINTED]
    flat = _flat_concat(stack)
    fm_expected = 0.5 * (flat.sum(axis=1, keepdims=True) ** 2 - (flat ** 2).sum(axis=1, keepdims=True))
    deepfm = Build("DeepFM", kwargs=(("dense_module", Build("Linear", (STACK_DIM32_WIDTH, 1))),))
    errors, problems = Errors(), []
    for package in sides(record, ctx):
        fm = adapters.construct(Build("FactorizationMachine"), package, seed=ctx.seed)
        errors.add(f"{package}:FactorizationMachine", "output (B, 1)", _forward64(fm, package, stack, ctx),
                   fm_expected, tolerances.forward64(2 * STACK_DIM32_WIDTH))
        module = adapters.construct(deepfm, package, seed=ctx.seed)
        errors.add(f"{package}:DeepFM(Linear(448, 1))", "output (B, 1)", _forward64(module, package, stack, ctx),
                   _deepfm_formula(module, stack), tolerances.forward64(STACK_DIM32_WIDTH))
        # refimpl's Linear names the width in a ValueError; torch's (accel, TorchRec) raises RuntimeError.
        problem = _raises(lambda m=module, p=package: _forward64(m, p, printed, ctx), (ValueError, RuntimeError), "448")
        if problem:
            problems.append(f"{package}: DeepFM(Linear(448, 1)) on tensor(B, 3, 16): {problem}")
    return _outcome(errors, problems, 3 * len(sides(record, ctx)))


# --- D17: lazy_apply and apply on lazy modules ----------------------------------------------------
def _page_init_weights(calls: List[str]) -> Callable[[Any], None]:
    """The page's init_weights: fill the weight with 1 where type(m) == LazyLinear."""
    import torch

    @torch.no_grad()
    def init_weights(m: Any) -> None:
        calls.append(type(m).__name__)
        if type(m) == torch.nn.LazyLinear:  # noqa: E721 (the page's exact-type test, on purpose)
            m.weight.fill_(1.0)

    return init_weights


def _d17_problems(package: str) -> List[str]:
    import torch

    lazy = _module(package, "lazy_extension")
    problems: List[str] = []
    torch.manual_seed(0)
    x = torch.randn(2, 10)
    # The page: "linear.apply(init_weights) fails" -- it does, but in torch (LazyLinear is not the
    # mixin): fill_ on an uninitialised parameter raises ValueError.
    problem = _raises(lambda: torch.nn.LazyLinear(2).apply(_page_init_weights([])), ValueError, "uninitialized")
    if problem:
        problems.append(f"{package}: LazyLinear(2).apply(init_weights): {problem}")
    # The page's lazy_apply example: init_weights runs once after the first forward, when torch has
    # already turned the LazyLinear into a Linear, so the type test matches nothing.
    calls: List[str] = []
    linear = lazy.lazy_apply(torch.nn.LazyLinear(2), _page_init_weights(calls))
    linear(x)
    linear(x)
    if (type(linear).__name__, bool((linear.weight == 1).all()), calls) != ("Linear", False, ["Linear"]):
        problems.append(f"{package}: after lazy_apply(linear, init_weights) and two forwards: class "
                        f"{type(linear).__name__}, weight all ones {bool((linear.weight == 1).all())}, calls {calls}; "
                        "expected Linear, False, ['Linear']")
    calls = []
    seq = lazy.lazy_apply(torch.nn.Sequential(torch.nn.LazyLinear(2), torch.nn.LazyLinear(2)),
                          _page_init_weights(calls))
    seq(x)
    filled = [bool((m.weight == 1).all()) for m in seq]
    if calls != ["Linear", "Linear", "Sequential"] or any(filled):
        problems.append(f"{package}: lazy_apply(seq, init_weights): calls {calls}, filled {filled}; "
                        "expected ['Linear', 'Linear', 'Sequential'], none filled")
    # What the page means: a test on the initialised class fills the weight, after the first forward.
    linear = lazy.lazy_apply(torch.nn.LazyLinear(2), lambda m: m.weight.data.fill_(1.0)
                             if isinstance(m, torch.nn.Linear) else None)
    linear(x)
    if not bool((linear.weight == 1).all()):
        problems.append(f"{package}: lazy_apply with an isinstance(m, Linear) test left the weight unfilled")
    # The mixin's own apply refuses before the first forward (RuntimeError naming the module).
    mixed = type("MixinLazyLinear", (lazy.LazyModuleExtensionMixin, torch.nn.LazyLinear), {})(2)
    problem = _raises(lambda: mixed.apply(lambda m: None), RuntimeError, "has not been initialized")
    if problem:
        problems.append(f"{package}: LazyModuleExtensionMixin.apply before the first forward: {problem}")
    return problems


def check_d17(record: Record, ctx: Context) -> Outcome:
    """The page's lazy_apply example fills nothing: init_weights runs once after the first forward,
    when the module's class is already Linear, so `type(m) == LazyLinear` is False; the page's
    failing `linear.apply` is torch's ValueError; the mixin's apply raises RuntimeError."""
    problems: List[str] = []
    for package in sides(record, ctx):
        problems += _d17_problems(package)
    return outcome_of(problems, 5 * len(sides(record, ctx)))


# --- D18: OpRegistryState, register_custom_op ----------------------------------------------------
PAGE_ONLY_UTILS = ("OpRegistryState", "register_custom_op")


def check_d18(record: Record, ctx: Context) -> Outcome:
    """The page's utils.OpRegistryState and utils.register_custom_op exist nowhere (AttributeError);
    neither does recspec's package root export them."""
    problems = []
    for package in sides(record, ctx):
        utils = _module(package, "utils")
        roots = [utils] if package == "torchrec" else [utils, importlib.import_module(package)]
        for where in roots:
            for name in PAGE_ONLY_UTILS:
                problem = _raises(lambda where=where, name=name: getattr(where, name), AttributeError, name)
                if problem:
                    problems.append(f"{where.__name__}.{name}: {problem}")
    return outcome_of(problems, len(PAGE_ONLY_UTILS) * len(sides(record, ctx)))


# --- D19: construct_jagged_tensors(_inference) signatures ----------------------------------------
# (name, default) in order; inspect.Parameter.empty for a required argument.
_REQ = inspect.Parameter.empty
PAGE_CJT = (("embeddings", _REQ), ("features", _REQ), ("embedding_names", _REQ), ("need_indices", False),
            ("features_to_permute_indices", None), ("original_features", None), ("reverse_indices", None))
PAGE_CJT_INFERENCE = (("embeddings", _REQ), ("lengths", _REQ), ("values", _REQ), ("embedding_names", _REQ),
                      ("need_indices", False), ("features_to_permute_indices", None), ("reverse_indices", None))
TORCHREC_CJT = PAGE_CJT + (("seq_vbe_ctx", None), ("use_gather_select", False))
TORCHREC_CJT_INFERENCE = PAGE_CJT_INFERENCE + (("remove_padding", False),)


def parameters(fn: Callable[..., Any]) -> Tuple[Tuple[str, Any], ...]:
    """fn's (name, default) pairs in order."""
    return tuple((p.name, p.default) for p in inspect.signature(fn).parameters.values())


# Two keys a, b over a batch of 2, lengths [[2, 0], [1, 3]] (an empty bag in a): embedding rows 0-1
# are a's, 2-5 b's.
_LENGTHS = np.array([[2, 0], [1, 3]], dtype=np.int64)
_IDS = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
_ROWS = np.arange(12, dtype=np.float64).reshape(6, 2)
_EXPECTED = {"x": (_ROWS[:2], [2, 0]), "y": (_ROWS[2:], [1, 3])}


def _as_arrays(out: Dict[str, Any]) -> Dict[str, Tuple[np.ndarray, List[int]]]:
    def arr(v: Any) -> np.ndarray:
        return np.asarray(adapters.to_numpy(v) if hasattr(v, "detach") else v, dtype=np.float64)

    return {name: (arr(jt.values()), arr(jt.lengths()).astype(np.int64).tolist()) for name, jt in out.items()}


def _d19_calls(package: str) -> Dict[str, Callable[[], Any]]:
    """The calls TorchRec's extra arguments allow, each expected to give _EXPECTED, and (under the key
    "seq_vbe_ctx") a call with a variable-batch context."""
    utils = _module(package, "utils")
    if package == "refimpl":
        from refimpl.sparse import KeyedJaggedTensor

        rows, lengths, ids, padded = _ROWS, _LENGTHS, _IDS, np.concatenate([_ROWS, -np.ones((2, 2))])
    else:
        import torch

        KeyedJaggedTensor = (importlib.import_module("torchrec.sparse.jagged_tensor").KeyedJaggedTensor
                             if package == "torchrec" else importlib.import_module("accel.sparse").KeyedJaggedTensor)
        rows, lengths, ids = torch.tensor(_ROWS), torch.tensor(_LENGTHS), torch.tensor(_IDS)
        padded = torch.cat([rows, -torch.ones(2, 2, dtype=torch.float64)])
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=ids, lengths=lengths.reshape(-1))
    names = ["x", "y"]
    return {
        "seq_vbe_ctx": lambda: utils.construct_jagged_tensors(rows, kjt, names, seq_vbe_ctx=object()),
        "use_gather_select=True": lambda: utils.construct_jagged_tensors(rows, kjt, names, use_gather_select=True),
        "use_gather_select=False": lambda: utils.construct_jagged_tensors(rows, kjt, names, use_gather_select=False),
        "remove_padding=True on 2 padding rows": lambda: utils.construct_jagged_tensors_inference(
            padded, lengths, ids, names, remove_padding=True),
    }


def check_d19(record: Record, ctx: Context) -> Outcome:
    """construct_jagged_tensors takes TorchRec's seq_vbe_ctx=None and use_gather_select=False after the
    page's arguments, construct_jagged_tensors_inference TorchRec's remove_padding=False (checked with
    inspect.signature); use_gather_select gives the same rows either way and remove_padding drops
    padding rows past sum(lengths). recspec rejects a variable-batch seq_vbe_ctx (NotImplementedError)."""
    problems = []
    for package in sides(record, ctx):
        utils, calls = _module(package, "utils"), _d19_calls(package)
        vbe = calls.pop("seq_vbe_ctx")
        for fn, want in ((utils.construct_jagged_tensors, TORCHREC_CJT),
                         (utils.construct_jagged_tensors_inference, TORCHREC_CJT_INFERENCE)):
            got = parameters(fn)
            if got != want:
                problems.append(f"{package}: {fn.__name__}{got}, expected {want}")
        for label, call in calls.items():
            try:
                out = _as_arrays(call())
            except Exception as exc:  # an argument the package lacks is the finding
                problems.append(f"{package}: {label} raised {type(exc).__name__}({exc})")
                continue
            same = out.keys() == _EXPECTED.keys() and all(
                np.array_equal(out[k][0], v) and out[k][1] == lengths for k, (v, lengths) in _EXPECTED.items())
            if not same:
                problems.append(f"{package}: {label} gave {out}, expected {_EXPECTED}")
        if package != "torchrec":  # TorchRec reads the context; recspec has no variable batch per key
            problem = _raises(vbe, NotImplementedError, "seq_vbe_ctx")
            if problem:
                problems.append(f"{package}: construct_jagged_tensors(seq_vbe_ctx=object()): {problem}")
    return outcome_of(problems, 5 * len(sides(record, ctx)))


def _record(module: str, prop: str, check: Callable[[Record, Context], Outcome], spec: str, ident: str,
            sides_: Tuple[str, ...] = ("refimpl", "accel")) -> Record:
    return Record(module, prop, "discrepancy", "hand-written demonstration", (), check, spec, discrepancy=ident,
                  sides=sides_, dtypes=("float32", "float64"))


RECORDS: List[Record] = [
    _record("DeepFM", "D6_example_imports", check_d6,
            'page example: "from torchrec.fb.modules.deepfm import DeepFM", "from torchrec.fb.modules.mlp import '
            'LazyMLP", "dense_module = nn.Linear(192, output_dim)"; sem. 16 D6: the module is '
            "torchrec.modules.deepfm; no LazyMLP", "D6"),
    _record("DeepFM", "D7_example_shapes", check_d7,
            'page (DeepFM, FactorizationMachine): "3 dense features with dimension=16" ... "tensor(B, 3, 16) '
            '(dense_features with num_embeddings=3, embedding_dim=32)"; sem. 16 D7: 16 vs 32', "D7"),
    _record("lazy_apply", "D17_page_example", check_d17,
            'page: "linear.apply(init_weights)  # this fails"; "lazy_apply(linear, init_weights) ... runs '
            '`init_weights` only once, right after first forward pass" with "if type(m) == torch.nn.LazyLinear: '
            'm.weight.fill_(1.0)"; sem. 9 / 16 D17: by hook time the class is Linear, nothing is filled',
            "D17", sides_=("accel",)),
    _record("OpRegistryState", "D18_absent", check_d18,
            'page: "class torchrec.modules.utils.OpRegistryState", "torchrec.modules.utils.register_custom_op('
            'module, dims)"; sem. 10 / 16 D18: not present in 1.8.0', "D18"),
    _record("construct_jagged_tensors", "D19_signatures", check_d19,
            'page: "construct_jagged_tensors(embeddings, features, embedding_names, need_indices=False, '
            'features_to_permute_indices=None, original_features=None, reverse_indices=None)" and the inference '
            "form ending in reverse_indices; sem. 10 / 16 D19: + seq_vbe_ctx, use_gather_select / remove_padding",
            "D19"),
]
