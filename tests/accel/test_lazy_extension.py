"""accel.modules.lazy_extension: keyword arguments on the first forward, apply before init, lazy_apply (semantics.md 9)."""

import pytest
import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from accel.modules.lazy_extension import LazyModuleExtensionMixin, lazy_apply


class Scale(nn.Module):
    """y = x * w (the class a LazyScale becomes once initialised)."""

    def forward(self, input, offset=0.0):
        return input * self.weight + offset


class LazyScale(LazyModuleExtensionMixin, Scale):
    """w of length x.shape[-1], filled with the keyword `fill` of the first forward."""

    cls_to_become = Scale

    def __init__(self):
        super().__init__()
        self.weight = UninitializedParameter()
        self.seen_kwargs = []

    def initialize_parameters(self, input, offset=0.0, fill=1.0):
        self.seen_kwargs.append({"offset": offset, "fill": fill})
        with torch.no_grad():
            self.weight.materialize((input.shape[-1],))
            self.weight.fill_(fill)

    def forward(self, input, offset=0.0, fill=1.0):
        return input * self.weight + offset


def test_keyword_arguments_reach_initialize_parameters_and_forward():
    m = LazyScale()
    out = m(torch.ones(2, 3), offset=0.5, fill=2.0)
    assert m.seen_kwargs == [{"offset": 0.5, "fill": 2.0}]
    assert out.tolist() == [[2.5] * 3] * 2
    assert type(m) is Scale and m.weight.shape == (3,)
    assert not hasattr(m, "_initialize_hook")


def test_apply_before_first_forward_raises():
    m = LazyScale()
    with pytest.raises(RuntimeError, match="Module LazyScale has not been initialized"):
        m.apply(lambda _: None)
    with pytest.raises(RuntimeError, match="has not been initialized"):
        nn.Sequential(nn.ReLU(), LazyScale()).apply(lambda _: None)


def test_apply_after_first_forward_visits_the_module():
    m = LazyScale()
    m(torch.ones(1, 2))
    seen = []
    m.apply(seen.append)
    assert seen == [m]


def test_uninitialized_parameters_left_behind_raise():
    class Forgetful(LazyScale):
        def initialize_parameters(self, input, **kwargs):
            pass

    with pytest.raises(RuntimeError, match="has not been fully initialized"):
        Forgetful()(torch.ones(1, 2))


def test_three_parameter_pre_hook_receives_kwargs_and_replaces_args():
    m = LazyScale()
    received = []

    def hook(module, args, kwargs):
        received.append(dict(kwargs))
        return args[0] * 10  # a non-tuple result replaces the positional arguments

    m.register_forward_pre_hook(hook)
    out = m(torch.ones(1, 2), offset=1.0)
    assert received == [{"offset": 1.0}]
    assert out.tolist() == [[11.0, 11.0]]


def test_two_parameter_pre_hook_receives_args_only():
    m = LazyScale()
    received = []

    def hook(module, args):
        received.append(len(args))
        return (args[0] + 1,)

    m.register_forward_pre_hook(hook)
    out = m(torch.zeros(1, 2), offset=3.0)
    assert received == [1]
    assert out.tolist() == [[4.0, 4.0]]


# --- lazy_apply -----------------------------------------------------------------------------------------
def counting_fn(log):
    def fn(module):
        log.append(type(module).__name__)

    return fn


def test_lazy_apply_runs_once_after_first_forward():
    log = []
    seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert lazy_apply(seq, counting_fn(log)) is seq
    assert log == []
    seq(torch.ones(1, 2))
    assert log == ["Linear", "ReLU", "Sequential"]
    seq(torch.ones(1, 2))
    assert len(log) == 3
    assert not hasattr(seq, "_functions_to_lazy_apply")


def test_lazy_apply_on_a_lazy_module_sees_initialised_parameters():
    m = LazyScale()
    shapes = []
    lazy_apply(m, lambda mod: shapes.append(tuple(mod.weight.shape)))
    m(torch.ones(2, 4))
    assert shapes == [(4,)]


def test_double_and_nested_attachment_accumulate():
    log = []
    fn = counting_fn(log)
    inner = nn.ReLU()
    seq = nn.Sequential(inner)
    lazy_apply(seq, fn)
    lazy_apply(seq, fn)
    lazy_apply(inner, fn)
    seq(torch.ones(1, 2))
    # inner's own hook fires during seq's forward, then seq's two attachments run.
    assert log == ["ReLU"] + ["ReLU", "Sequential"] * 2


def test_functions_run_in_attach_order():
    order = []
    m = nn.Identity()
    lazy_apply(m, lambda _: order.append("first"))
    lazy_apply(m, lambda _: order.append("second"))
    m(torch.ones(1))
    assert order == ["first", "second"]


def test_lazy_apply_bad_arguments():
    with pytest.raises(TypeError, match="module must be an nn.Module, got function"):
        lazy_apply(lambda x: x, print)
    with pytest.raises(TypeError, match="fn must be a callable taking a module, got int"):
        lazy_apply(nn.ReLU(), 3)
