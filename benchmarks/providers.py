"""Providers: one way of running a case (refimpl, accel, the anchor, a bare GEMM reference).

`prepare(case, state, inputs)` builds the module with the shared parameters `state` (the
anchor's, so every provider computes the same function) and returns a `Prepared` with the
callables the timer runs. A provider that cannot run a case raises `Unavailable`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from benchmarks.cases import Case


class Unavailable(Exception):
    """The provider cannot run this case here (library absent, module not built yet)."""


@dataclass
class Prepared:
    forward: Callable[[], object]
    forward_backward: Callable[[], object]
    before_backward: Optional[Callable[[], None]]  # untimed: clears accumulated gradients
    sync: Callable[[], None]
    output: Callable[[], Optional[np.ndarray]]  # one forward as float64 NumPy, for the check
    state: Optional[Dict[str, torch.Tensor]] = None  # parameters, when this is the anchor


_TORCHREC_FILES = {
    "CrossNet": "crossnet",
    "LowRankCrossNet": "crossnet",
    "VectorCrossNet": "crossnet",
    "LowRankMixtureCrossNet": "crossnet",
    "FactorizationMachine": "deepfm",
    "DeepFM": "deepfm",
    "SwishLayerNorm": "activation",
    "MLP": "mlp",
}


def _torchrec_class(name: str) -> type:
    return getattr(importlib.import_module(f"torchrec.modules.{_TORCHREC_FILES[name]}"), name)


def _anchor_class(name: str) -> type:
    return getattr(importlib.import_module("benchmarks.anchors"), name)


def _accel_class(name: str) -> type:
    try:
        return getattr(importlib.import_module("accel"), name)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"accel.{name}: {exc}") from exc


def torchrec_importable() -> bool:
    try:
        importlib.import_module("torchrec.modules.crossnet")
    except Exception:  # absent, or present with a broken FBGEMM: either way not usable
        return False
    return True


def _sync_for(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


class TorchProvider:
    """A torch module family (TorchRec, the anchor transcriptions or accel) on one device."""

    def __init__(self, name: str, role: str, device: str, lookup: Callable[[str], type]) -> None:
        self.name, self.role, self.device, self._lookup = name, role, device, lookup

    def _build(self, case: Case, state: Optional[Mapping[str, torch.Tensor]]) -> torch.nn.Module:
        cls = self._lookup(case.module)
        torch.manual_seed(0)
        kwargs = dict(case.kwargs)
        if case.dense_linear is not None:
            kwargs["dense_module"] = torch.nn.Linear(*case.dense_linear)
        module = cls(**kwargs)
        if state is not None:
            module.load_state_dict(state)
        return module.to(self.device)

    def prepare(
        self, case: Case, state: Optional[Mapping[str, torch.Tensor]], inputs: Sequence[np.ndarray]
    ) -> Prepared:
        module = self._build(case, state)
        tensors = [torch.from_numpy(a).to(self.device) for a in inputs]
        leaves = [t.clone().requires_grad_(True) for t in tensors]
        params = list(module.parameters())

        def call(args: List[torch.Tensor]) -> torch.Tensor:
            return module(args) if case.list_input else module(args[0])

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return call(tensors)

        # d(out.sum())/d(out), made once and contiguous as a downstream layer's gradient would be
        # (`out.sum().backward()` would hand the backward a stride-0 view and time the sum too).
        with torch.no_grad():
            grad_out = torch.ones_like(call(tensors)).contiguous()

        def forward_backward() -> None:
            call(leaves).backward(grad_out)

        def before_backward() -> None:
            for t in leaves + params:
                t.grad = None

        own_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        return Prepared(
            forward, forward_backward, before_backward, _sync_for(self.device),
            lambda: forward().detach().cpu().double().numpy(), own_state,
        )


class RefimplProvider:
    """refimpl's NumPy modules in float32 (refimpl's reference precision is float64; float32
    here so that it moves the same bytes as the torch providers)."""

    name, role, device = "refimpl-f32", "refimpl", "cpu"

    def prepare(
        self, case: Case, state: Optional[Mapping[str, torch.Tensor]], inputs: Sequence[np.ndarray]
    ) -> Prepared:
        try:
            refimpl = importlib.import_module("refimpl")
            cls = getattr(refimpl, case.module)
            kwargs = dict(case.kwargs)
            if case.dense_linear is not None:
                kwargs["dense_module"] = refimpl.Linear(*case.dense_linear, dtype=np.float32)
        except (ImportError, AttributeError) as exc:
            raise Unavailable(f"refimpl.{case.module}: {exc}") from exc
        module = cls(**kwargs, dtype=np.float32)
        if state is not None:
            module.load_state_dict(state)
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in inputs]

        def forward() -> np.ndarray:
            return module(arrays) if case.list_input else module(arrays[0])

        grad_out = np.ones_like(forward())

        def forward_backward() -> None:
            forward()
            module.backward(grad_out)

        return Prepared(
            forward, forward_backward, None, lambda: None,
            lambda: np.asarray(forward(), dtype=np.float64),
        )


class GemmProvider:
    """The case's GEMMs alone (`a @ w.T` per product, plus `g @ w` and `g.T @ a` for the
    backward), on random operands: the time the products cost with nothing else around them."""

    role = "gemm"

    def __init__(self, device: str) -> None:
        self.device = device
        self.name = f"gemm-{device}"

    def prepare(
        self, case: Case, state: Optional[Mapping[str, torch.Tensor]], inputs: Sequence[np.ndarray]
    ) -> Prepared:
        if not case.gemms:
            raise Unavailable(f"{case.name} has no GEMM model")
        gen = torch.Generator().manual_seed(0)
        operands = [
            tuple(
                torch.randn(*shape, generator=gen).to(self.device)
                for shape in ((m, k), (n, k), (m, n))
            )
            for m, k, n in case.gemms
        ]

        def forward() -> None:
            for a, w, _ in operands:
                torch.mm(a, w.t())

        def forward_backward() -> None:
            for a, w, g in operands:
                torch.mm(a, w.t())
                torch.mm(g, w)
                torch.mm(g.t(), a)

        return Prepared(forward, forward_backward, None, _sync_for(self.device), lambda: None)


def anchor_provider(device: str, choice: str = "auto") -> TorchProvider:
    """TorchRec 1.8 when importable (or when `choice == "torchrec"`), else the transcriptions."""
    if choice not in ("auto", "torchrec", "transcription"):
        raise ValueError(f"anchor: expected 'auto', 'torchrec' or 'transcription', got {choice!r}")
    use_torchrec = choice == "torchrec" or (choice == "auto" and torchrec_importable())
    if use_torchrec:
        return TorchProvider(f"torchrec-{device}", "anchor", device, _torchrec_class)
    return TorchProvider(f"transcription-{device}", "anchor", device, _anchor_class)


def accel_provider(device: str) -> TorchProvider:
    return TorchProvider(f"accel-{device}", "accel", device, _accel_class)
