"""Golden files on disk: plain `.npz` archives and a JSON manifest, readable without recspec.

    import json, numpy as np
    manifest = json.load(open("manifest.json"))
    arrays = np.load("CrossNet.npz", allow_pickle=False)

Archive keys: `input` (or `input.0`, `input.1`, ... for a list of embeddings), `state.<key>`
for every state_dict entry, `grad_output` (the cotangent G), `output`, and the gradients of
L = sum(output * G): `grad_input` (or `grad_input.<i>`) and `grad.<key>`. Archives are written
with fixed zip timestamps, so the same arrays give the same bytes and the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: deterministic archives


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> str:
    """Write `arrays` as an uncompressed .npz (sorted keys, fixed timestamps); return its sha256."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH), buffer.getvalue())
    return sha256(path)


def read_npz(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(directory: Path) -> Dict[str, Any]:
    path = Path(directory) / MANIFEST
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"golden manifest {path}: schema_version expected {SCHEMA_VERSION}, "
            f"got {manifest.get('schema_version')!r}"
        )
    return manifest


def write_manifest(directory: Path, manifest: Dict[str, Any]) -> None:
    with open(Path(directory) / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")


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
