"""Lazy modules whose first forward may take keyword arguments, and functions applied after that forward.

Mirrors `torchrec.modules.lazy_extension` (accel only; refimpl has no lazy modules).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Tuple

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.utils.hooks import RemovableHandle


def _positional_arity(hook: Callable[..., Any]) -> int:
    try:
        return len(inspect.signature(hook).parameters)
    except (TypeError, ValueError):
        return -1


def _args_only_result(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Adapt hook(module, args, kwargs) -> new args | None to torch's with_kwargs contract ((args, kwargs) | None)."""

    def adapted(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[Tuple[Any, Any]]:
        result = hook(module, args, kwargs)
        if result is None:
            return None
        return (result if isinstance(result, tuple) else (result,)), kwargs

    return adapted


class LazyModuleExtensionMixin(LazyModuleMixin):
    """A LazyModuleMixin whose first forward may take keyword arguments, all passed to initialize_parameters.

    Differences from torch's LazyModuleMixin:
    * a forward pre-hook taking exactly three parameters is called hook(module, args, kwargs),
      any other hook(module, args); a non-None result replaces the positional arguments (a
      non-tuple is wrapped in one), and the keyword arguments always reach forward;
    * apply(fn) raises RuntimeError until the first forward has initialised the parameters
      (so does apply on any container holding such a module, since apply recurses).
    """

    def register_forward_pre_hook(
        self, hook: Callable[..., Any], *, prepend: bool = False, with_kwargs: bool = False
    ) -> RemovableHandle:
        if not with_kwargs and _positional_arity(hook) == 3:
            hook, with_kwargs = _args_only_result(hook), True
        return super().register_forward_pre_hook(hook, prepend=prepend, with_kwargs=with_kwargs)

    def _infer_parameters(
        self, module: nn.Module, args: Tuple[Any, ...], kwargs: Optional[Dict[str, Any]] = None
    ) -> None:
        """Materialise the parameters from the first call's arguments, then become `cls_to_become`."""
        module.initialize_parameters(*args, **(kwargs or {}))
        if module.has_uninitialized_params():
            raise RuntimeError(
                f"module {module._get_name()} has not been fully initialized: initialize_parameters "
                "left uninitialized parameters"
            )
        module._initialize_hook.remove()
        module._load_hook.remove()
        delattr(module, "_initialize_hook")
        delattr(module, "_load_hook")
        if module.cls_to_become is not None:
            module.__class__ = module.cls_to_become

    def apply(self, fn: Callable[[nn.Module], None]) -> nn.Module:
        """fn(m) for every submodule m (children first, recursively), then fn(self); only once initialised."""
        if hasattr(self, "_initialize_hook"):
            raise RuntimeError(
                f"Module {self._get_name()} has not been initialized. Run one forward pass (a dummy "
                "batch) to initialize its parameters before calling apply()."
            )
        return super().apply(fn)


def _apply_attached_functions(module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook: after the first forward, module.apply(fn) for every attached fn, in attach order, once."""
    functions = module._functions_to_lazy_apply
    del module._functions_to_lazy_apply
    module._lazy_apply_hook.remove()
    del module._lazy_apply_hook
    for fn in functions:
        module.apply(fn)


def lazy_apply(module: nn.Module, fn: Callable[[nn.Module], None]) -> nn.Module:
    """Attach fn to module: module.apply(fn) runs once, right after module's first forward.

    Works on lazy and ordinary modules. Attaching again (the same fn or another, to the module
    or to a submodule) accumulates: each attachment is applied. Returns module.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking a module, got {type(fn).__name__}")
    if not hasattr(module, "_functions_to_lazy_apply"):
        module._functions_to_lazy_apply = []
        module._lazy_apply_hook = module.register_forward_hook(_apply_attached_functions)
    module._functions_to_lazy_apply.append(fn)
    return module
