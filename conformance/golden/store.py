"""Golden files on disk: plain `.npz` archives and a JSON manifest, readable without recspec.

The format is `recspec-golden/1`, specified in docs/golden_format.md:

    import json, numpy as np
    manifest = json.load(open("manifest.json"))          # manifest["schema"] == "recspec-golden/1"
    arrays = np.load("CrossNet.npz", allow_pickle=False)

Dense archives: `input` (or `input.0`, `input.1`, ... for a list of embeddings), `state.<key>` for
every state_dict entry, `grad_output` (the cotangent G), `output`, and the gradients of
L = sum(output * G): `grad_input` (or `grad_input.<i>`) and `grad.<key>`. Jagged archives (the
embedding modules) hold the input KeyedJaggedTensor as `kjt.*` and name each output. Every array is
numeric (no object arrays, so no pickle); the manifest describes each one (`describe`). Archives are
written with fixed zip timestamps, so the same arrays give the same bytes and the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

SCHEMA = "recspec-golden/1"
MANIFEST = "manifest.json"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: deterministic archives
# bool, signed and unsigned integers, floats: what np.load reads back without pickle.
NUMERIC_KINDS = "biuf"

# What each archive key holds, by prefix (longest first wins); `<...>` is the rest of the key.
ROLES = {
    "input": ("input", "the forward's input (batch first)"),
    "input.": ("input", "the forward's input <i> of a list of tensors (batch first)"),
    "kjt.lengths": ("input", "the input KeyedJaggedTensor's lengths, key-major (int64)"),
    "kjt.values": ("input", "the input KeyedJaggedTensor's ids (int64)"),
    "kjt.weights": ("input", "the input KeyedJaggedTensor's per-id weights"),
    "kjt.stride": ("input", "the input KeyedJaggedTensor's batch size B, one int64"),
    "state.": ("state", "state_dict entry <...>, loaded before the forward"),
    "output": ("output", "the forward's output"),
    "output.": ("output", "the forward's output <...>"),
    "grad_output": ("grad_output", "the cotangent G of L = sum(output * G)"),
    "grad_output.": ("grad_output", "the cotangent of output <...> in L = sum <output, grad_output>"),
    "grad_input": ("gradient", "dL/d input"),
    "grad_input.": ("gradient", "dL/d input <i>"),
    "grad_weights": ("gradient", "dL/d kjt.weights"),
    "grad.": ("gradient", "dL/d state_dict entry <...>"),
}


class GoldenFormatError(ValueError):
    """A golden directory or archive that is not `recspec-golden/1`."""


def _numeric(key: str, array: np.ndarray, where: str) -> None:
    if array.dtype.kind not in NUMERIC_KINDS:
        raise GoldenFormatError(f"{where}: array {key!r} expected a numeric dtype (kinds {NUMERIC_KINDS!r}), "
                                f"got {array.dtype}")


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> str:
    """Write `arrays` as an uncompressed .npz (sorted keys, fixed timestamps); return its sha256."""
    for key, value in arrays.items():
        _numeric(key, np.asarray(value), f"golden file {path}")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH), buffer.getvalue())
    return sha256(path)


def read_npz(path: Path) -> Dict[str, np.ndarray]:
    """The arrays of one archive; never unpickles, and refuses a non-numeric array."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:  # np.load's answer to an object array under allow_pickle=False
        raise GoldenFormatError(f"golden file {path}: expected numeric arrays only, got {exc}") from exc
    for key, value in arrays.items():
        _numeric(key, value, f"golden file {path}")
    return arrays


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(directory: Path) -> Dict[str, Any]:
    """The manifest of a golden directory, after checking that its schema is SCHEMA."""
    path = Path(directory) / MANIFEST
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    got = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
    if got != SCHEMA:
        raise GoldenFormatError(
            f"golden manifest {path}: schema expected {SCHEMA!r}, got {got!r} (a manifest of another "
            f"format version; regenerate it with `python -m conformance.golden.generate DIR`)"
        )
    return manifest


def write_manifest(directory: Path, manifest: Dict[str, Any]) -> None:
    with open(Path(directory) / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")


def role(key: str) -> Any:
    """(role, description) of an archive key (see ROLES)."""
    if key in ROLES:
        return ROLES[key][0], ROLES[key][1].replace(" <...>", "").replace(" <i>", "")
    prefix = max((p for p in ROLES if p.endswith(".") and key.startswith(p)), key=len, default=None)
    if prefix is None:
        raise GoldenFormatError(f"golden archive key {key!r}: expected one of the prefixes {sorted(ROLES)}")
    kind, text = ROLES[prefix]
    rest = key[len(prefix):]
    return kind, text.replace("<...>", repr(rest)).replace("<i>", rest)


def describe(arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The manifest's description of one archive: each array's role, dtype, shape and meaning,
    and the key lists per role (inputs, state keys, outputs, cotangents, gradients)."""
    entries: Dict[str, Any] = {}
    groups: Dict[str, List[str]] = {"input": [], "state": [], "output": [], "grad_output": [], "gradient": []}
    for key in sorted(arrays):
        value = np.asarray(arrays[key])
        kind, text = role(key)
        entries[key] = {"role": kind, "dtype": value.dtype.name, "shape": list(value.shape), "description": text}
        groups[kind].append(key)
    return {
        "inputs": groups["input"],
        "state_keys": [k[len("state."):] for k in groups["state"]],
        "outputs": groups["output"],
        "grad_outputs": groups["grad_output"],
        "gradients": groups["gradient"],
        "arrays": entries,
    }


def inputs_of(arrays: Dict[str, np.ndarray]) -> Any:
    """The forward input stored in a golden archive: one array, or the list input.0, input.1, ..."""
    if "input" in arrays:
        return arrays["input"]
    return [arrays[f"input.{i}"] for i in range(_count(arrays, "input."))]


def input_gradients_of(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The stored input gradients, named as conformance.adapters names gradients."""
    if "grad_input" in arrays:
        return {"grad input": arrays["grad_input"]}
    return {f"grad input[{i}]": arrays[f"grad_input.{i}"] for i in range(_count(arrays, "grad_input."))}


def prefixed(arrays: Dict[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    """The entries under `prefix`, with the prefix removed ("state." -> state_dict keys)."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _count(arrays: Dict[str, np.ndarray], prefix: str) -> int:
    indices: List[int] = [int(k[len(prefix):]) for k in arrays if k.startswith(prefix) and k[len(prefix):].isdigit()]
    return max(indices) + 1 if indices else 0
