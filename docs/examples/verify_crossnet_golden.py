"""Verify a NumPy CrossNet from recspec's golden files alone (NumPy and json, no recspec import).

    python verify_crossnet_golden.py GOLDEN_DIR [--perturb]

--perturb moves the bias out of the product, x_0 * (W_l x_l) + b_l + x_l, a subtly wrong CrossNet
that this check must reject. Exits 0 when every CrossNet file agrees, 1 otherwise.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def crossnet(state, x, perturb=False):
    """x_{l+1} = x_0 * (W_l x_l + b_l) + x_l; the layers are the state's kernels.<l>, bias.<l>."""
    x_0 = x_l = x
    for l in range(sum(k.startswith("kernels.") for k in state)):
        W_l, b_l = state[f"kernels.{l}"], state[f"bias.{l}"].reshape(-1)
        x_l = x_0 * (x_l @ W_l.T) + b_l + x_l if perturb else x_0 * (x_l @ W_l.T + b_l) + x_l
    return x_l


def main(directory, perturb):
    manifest = json.loads((directory / "manifest.json").read_text())
    if manifest.get("schema") != "recspec-golden/1":
        sys.exit(f"manifest schema: expected 'recspec-golden/1', got {manifest.get('schema')!r}")
    checked = 0
    for name, entry in manifest["files"].items():
        if entry["module"] != "CrossNet":
            continue
        data = (directory / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            sys.exit(f"{name}: sha256 differs from the manifest's")
        with np.load(directory / name, allow_pickle=False) as arrays:
            state = {k: arrays[f"state.{k}"] for k in entry["state_keys"]}
            y, ref = crossnet(state, arrays["input"], perturb), arrays["output"]
        err = np.abs(y - ref).max() / np.abs(ref).max()  # normwise relative error
        tol = 16 * entry["reduction"] * np.finfo(np.float64).eps  # 16 n eps: summation order only
        print(f"{name}: {entry['constructor']} normwise error {err:.3g}, tolerance {tol:.3g}")
        checked += 1
        if not err <= tol:
            return 1
    return 0 if checked else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), "--perturb" in sys.argv[2:]))
