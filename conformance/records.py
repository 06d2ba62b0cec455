"""Properties as data: a `Record` names what is checked, on which inputs, against what, how tightly.

A record is checked by its `check` function, `check(record, ctx) -> Outcome` (see
`conformance.runner`); the generic checks live in `conformance.checks`, module-specific ones
next to their records in `conformance.properties.<family>`. Module constructions are `Build`
values, so the same record builds a refimpl module, an accel module or a TorchRec module.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

from conformance.tolerances import Tolerance

KINDS = (
    "forward",  # refimpl vs accel, float64, tight
    "forward_f32",  # accel-float32's error at most k x refimpl-float32's (vs float64)
    "backward_fd",  # refimpl's analytic backward vs central differences, float64
    "autograd",  # accel autograd vs refimpl backward, inputs and every parameter, float64
    "invariant",  # an identity the spec implies, on refimpl and accel
    "error",  # bad input raises the named exception on refimpl and accel
    "golden",  # the committed golden vectors are reproduced
    "discrepancy",  # a ledger entry (page vs TorchRec vs recspec) still reproduces
)

# Every module in scope has at least one record of each of these.
MAIN_KINDS = ("forward", "forward_f32", "backward_fd", "autograd", "error", "golden")

_DISCREPANCY_ID = re.compile(r"D\d+")


@dataclass(frozen=True)
class Act:
    """An elementwise activation named once, resolved per package (refimpl's `relu` or `torch.relu`)."""

    name: str


InShape = Union[Tuple[int, ...], Tuple[Tuple[int, ...], ...]]


@dataclass(frozen=True)
class Build:
    """How to construct one module: `module(*args, **kwargs)` in any package, plus its input shape.

    `module` is a public class name (`"CrossNet"`; `"Linear"` is torch.nn.Linear's counterpart).
    `args`/`kwargs` hold plain values, `Act` activations and nested `Build`s (DeepFM's
    dense_module); lists are written as tuples and passed as lists. `in_shape` is the input's
    shape after the batch dimension, or a tuple of such shapes for a list-of-tensors input.
    `reduction` is the longest chain of summed products in one output element, the `n` that
    float64 tolerances scale with (see conformance.tolerances).
    """

    module: str
    args: Tuple[Any, ...] = ()
    kwargs: Tuple[Tuple[str, Any], ...] = ()
    in_shape: InShape = ()
    reduction: int = 1
    label: str = ""

    @property
    def takes_list(self) -> bool:
        return bool(self.in_shape) and isinstance(self.in_shape[0], tuple)

    @property
    def name(self) -> str:
        return self.label or self.module

    def describe(self) -> Dict[str, Any]:
        """The constructor as JSON: {"module", "args", "kwargs"}; see `from_description`."""
        return {
            "module": self.module,
            "args": [_describe(a) for a in self.args],
            "kwargs": {k: _describe(v) for k, v in self.kwargs},
        }

    @staticmethod
    def from_description(d: Dict[str, Any], **fields: Any) -> "Build":
        """The inverse of `describe` (extra dataclass fields, such as reduction, by keyword)."""
        if not isinstance(d, dict) or "module" not in d:
            raise ValueError(f"constructor description: expected a dict with 'module', got {d!r}")
        return Build(
            module=d["module"],
            args=tuple(_undescribe(a) for a in d.get("args", [])),
            kwargs=tuple((k, _undescribe(v)) for k, v in d.get("kwargs", {}).items()),
            **fields,
        )


def _describe(value: Any) -> Any:
    if isinstance(value, Build):
        return value.describe()
    if isinstance(value, Act):
        return {"activation": value.name}
    if isinstance(value, tuple):
        return [_describe(v) for v in value]
    return value


def _undescribe(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"activation"}:
        return Act(value["activation"])
    if isinstance(value, dict):
        return Build.from_description(value)
    if isinstance(value, list):
        return tuple(_undescribe(v) for v in value)
    return value


@dataclass(frozen=True)
class ErrorCase:
    """Bad input and the error it must raise on every package.

    `inputs` is None when the constructor itself must raise; otherwise the forward input:
    a shape (tuple of ints) for one tensor, or a list of shapes for a list of tensors.
    `match` is a regular expression that names the argument; `mentions` are the expected and
    received values the message must state (each matched as a whole word).
    """

    label: str
    build: Build
    exception: type
    match: str
    mentions: Tuple[str, ...] = ()
    inputs: Any = None


Check = Callable[["Record", Any], Any]


@dataclass(frozen=True)
class Record:
    """One property of one module.

    module      the public class name the property is about
    property    short name, unique per module (`forward`, `forward[K=3]`, `zero_kernels`)
    kind        one of KINDS
    generator   the name of the input generator (conformance.generators.GENERATORS), or a
                short description of the hand-written inputs in `data`
    builds      the constructions the property runs on (each with its own inputs)
    check       check(record, ctx) -> Outcome
    spec        the page's or semantics.md's text that the property checks, quoted
    tolerance   None for the table's value (conformance.tolerances), or an override whose
                `reason` says why
    discrepancy the ledger id ("D3") for discrepancy records
    sides       the packages it exercises; "accel" stands for the package under test
                (accel, or TorchRec with --against torchrec)
    dtypes      the dtypes it runs the package under test in ("float32" where it can run
                against TorchRec's float32-only modules)
    data        check-specific data (error cases, hand-written inputs)
    """

    module: str
    property: str
    kind: str
    generator: str
    builds: Tuple[Build, ...]
    check: Check
    spec: str
    tolerance: Optional[Tolerance] = None
    discrepancy: Optional[str] = None
    sides: Tuple[str, ...] = ("refimpl", "accel")
    dtypes: Tuple[str, ...] = ("float64",)
    data: Tuple[Any, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Record {self.id}: kind expected one of {KINDS}, got {self.kind!r}")
        if not self.spec.strip():
            raise ValueError(f"Record {self.id}: spec expected the quoted text it checks, got ''")
        if self.tolerance is not None and not self.tolerance.reason.strip():
            raise ValueError(f"Record {self.id}: tolerance override expected a reason, got ''")
        if (self.kind == "discrepancy") != (self.discrepancy is not None):
            raise ValueError(
                f"Record {self.id}: discrepancy id expected exactly for kind 'discrepancy', "
                f"got kind {self.kind!r} with discrepancy {self.discrepancy!r}"
            )
        if self.discrepancy is not None and not _DISCREPANCY_ID.fullmatch(self.discrepancy):
            raise ValueError(f"Record {self.id}: discrepancy expected an id like 'D3', got {self.discrepancy!r}")
        if not self.dtypes or set(self.dtypes) - {"float32", "float64"}:
            raise ValueError(f"Record {self.id}: dtypes expected a subset of ('float32', 'float64'), got {self.dtypes}")
        unknown = set(self.sides) - {"refimpl", "accel"}
        if not self.sides or unknown:
            raise ValueError(f"Record {self.id}: sides expected a subset of ('refimpl', 'accel'), got {self.sides}")

    @property
    def id(self) -> str:
        """The stable id "Module/property" (`python -m conformance --repro ID` reruns it)."""
        return f"{self.module}/{self.property}"

    @property
    def short_id(self) -> str:
        """Eight hex digits of the id's SHA-1: the same record on every machine and run, and
        safe to type in any shell (`--repro 1f0c2a9b`)."""
        return short_id(self.id)


def short_id(record_id: str) -> str:
    """The short form of a record id (see `Record.short_id`)."""
    return hashlib.sha1(record_id.encode("utf-8")).hexdigest()[:8]
