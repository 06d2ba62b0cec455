"""conformance: refimpl and accel checked against each other, property by property.

Properties are data (`conformance.records.Record`), collected per module family under
`conformance.properties`, and run by one generic runner (`conformance.runner`). The command
line is `python -m conformance`; the same records run under pytest in `tests/conformance`.
`conformance.check(module=..., impl=...)` runs them on anyone's implementation
(`conformance.api`); the golden files' format is docs/golden_format.md.
"""

from importlib import import_module
from typing import Any, Dict

# Resolved on first use, so that `import conformance` imports neither torch nor the records.
_EXPORTS: Dict[str, str] = {
    "check": "conformance.api",
    "Adapter": "conformance.api",
    "Result": "conformance.api",
    "factory": "conformance.api",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'conformance' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> Any:
    return sorted(list(globals()) + list(_EXPORTS))
