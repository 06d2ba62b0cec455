"""accel.modules.utils: TorchRec's helper behaviour (semantics.md 10), RNG order, clear errors."""

import math

import pytest
import torch
from torch import nn

from accel.modules.utils import (
    check_module_output_dimension,
    construct_modulelist_from_single_module,
    convert_list_of_modules_to_modulelist,
    extract_module_or_tensor_callable,
    get_module_output_dimension,
    init_mlp_weights_xavier_uniform,
)


# --- extract_module_or_tensor_callable -----------------------------------------------------------
def test_factory_is_called_each_time():
    made = [extract_module_or_tensor_callable(nn.ReLU) for _ in range(2)]
    assert all(isinstance(m, nn.ReLU) for m in made) and made[0] is not made[1]
    layer = extract_module_or_tensor_callable(lambda: nn.LayerNorm(8))
    assert isinstance(layer, nn.LayerNorm) and layer.normalized_shape == (8,)


@pytest.mark.parametrize("fn", [torch.relu, torch.tanh, nn.functional.gelu, lambda x: x * 2])
def test_tensor_functions_are_returned_as_is(fn):
    assert extract_module_or_tensor_callable(fn) is fn


def test_module_instance_is_returned_as_is():
    act = nn.PReLU()
    assert extract_module_or_tensor_callable(act) is act


def test_factory_returning_a_non_module_is_a_value_error():
    with pytest.raises(ValueError, match="expected a callable that takes no input to return a torch.nn.Module, got a callable returning int"):
        extract_module_or_tensor_callable(lambda: 3)


def test_other_type_errors_propagate():
    def broken():
        raise TypeError("unrelated failure")

    with pytest.raises(TypeError, match="unrelated failure"):
        extract_module_or_tensor_callable(broken)


def test_non_callable_rejected():
    with pytest.raises(TypeError, match="module_or_callable must be a module factory.*got str"):
        extract_module_or_tensor_callable("relu")


# --- output dimensions ----------------------------------------------------------------------------------
def test_get_module_output_dimension():
    assert get_module_output_dimension(nn.Linear(5, 3), 5) == 3
    assert get_module_output_dimension(torch.relu, 4) == 4
    assert get_module_output_dimension(nn.Linear(5, 2, dtype=torch.float64), 5) == 2


def test_check_module_output_dimension_recurses_into_lists():
    assert check_module_output_dimension(nn.Linear(4, 2), 4, 2)
    assert not check_module_output_dimension(nn.Linear(4, 3), 4, 2)
    assert check_module_output_dimension([nn.Linear(4, 2), nn.ModuleList([nn.Linear(4, 2)])], 4, 2)
    assert not check_module_output_dimension(nn.ModuleList([nn.Linear(4, 2), nn.Linear(4, 3)]), 4, 2)


# --- init_mlp_weights_xavier_uniform -----------------------------------------------------------------------
def test_xavier_uniform_on_linear_matches_transcription():
    lin = nn.Linear(4, 3)
    torch.manual_seed(1)
    expected = torch.empty(3, 4)
    nn.init.xavier_uniform_(expected)
    torch.manual_seed(1)
    init_mlp_weights_xavier_uniform(lin)
    assert torch.equal(lin.weight, expected)
    assert torch.equal(lin.bias, torch.zeros(3))
    bound = math.sqrt(6 / (4 + 3))
    assert lin.weight.abs().max() <= bound


def test_xavier_uniform_leaves_other_modules_untouched():
    ln = nn.LayerNorm(3)
    torch.manual_seed(0)
    init_mlp_weights_xavier_uniform(ln)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))
    assert torch.equal(ln.weight, torch.ones(3))


def test_xavier_uniform_on_linear_without_bias_is_a_clear_error():
    lin = nn.Linear(4, 3, bias=False)
    before = lin.weight.detach().clone()
    with pytest.raises(ValueError, match="m must be an nn.Linear with a bias"):
        init_mlp_weights_xavier_uniform(lin)
    assert torch.equal(lin.weight, before)


# --- construct_modulelist_from_single_module ------------------------------------------------------------
def test_construct_modulelist_shape_rng_order_and_original_untouched():
    original = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    before = {k: v.clone() for k, v in original.state_dict().items()}
    torch.manual_seed(4)
    expected = []
    for _ in range(2 * 3):  # leaves in row-major order, each leaf's Linears in module order
        w0, w2 = torch.empty(2, 3), torch.empty(1, 2)
        nn.init.xavier_uniform_(w0)
        nn.init.xavier_uniform_(w2)
        expected.append((w0, w2))
    torch.manual_seed(4)
    grid = construct_modulelist_from_single_module(original, (2, 3))
    assert isinstance(grid, nn.ModuleList) and len(grid) == 2 and all(len(row) == 3 for row in grid)
    leaves = [leaf for row in grid for leaf in row]
    for leaf, (w0, w2) in zip(leaves, expected):
        assert leaf is not original
        assert torch.equal(leaf[0].weight, w0) and torch.equal(leaf[2].weight, w2)
        assert torch.equal(leaf[0].bias, torch.zeros(2))
    for k, v in original.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_construct_modulelist_bad_sizes():
    with pytest.raises(ValueError, match=r"sizes must name at least one dimension, got \(\)"):
        construct_modulelist_from_single_module(nn.ReLU(), ())
    with pytest.raises(ValueError, match=r"sizes\[1\] must be an int >= 0, got -1"):
        construct_modulelist_from_single_module(nn.ReLU(), (2, -1))


# --- convert_list_of_modules_to_modulelist ----------------------------------------------------------------
def test_convert_nested_list_keeps_the_modules():
    mods = [[nn.ReLU(), nn.Tanh()], [nn.Sigmoid(), nn.Identity()]]
    grid = convert_list_of_modules_to_modulelist(mods, (2, 2))
    assert isinstance(grid, nn.ModuleList) and isinstance(grid[1], nn.ModuleList)
    assert grid[0][1] is mods[0][1] and grid[1][0] is mods[1][0]


def test_convert_count_mismatch_names_the_sizes():
    with pytest.raises(ValueError, match=r"modules: expected 3 entries at this level \(sizes=\(3,\)\), got 2"):
        convert_list_of_modules_to_modulelist([nn.ReLU(), nn.ReLU()], (3,))
    with pytest.raises(ValueError, match=r"expected 2 entries at this level \(sizes=\(2,\)\), got 1"):
        convert_list_of_modules_to_modulelist([[nn.ReLU(), nn.ReLU()], [nn.ReLU()]], (2, 2))


def test_convert_non_iterable_level():
    with pytest.raises(TypeError, match=r"modules: expected an iterable of 2 modules \(sizes=\(2,\)\), got ReLU"):
        convert_list_of_modules_to_modulelist([nn.ReLU()], (1, 2))
