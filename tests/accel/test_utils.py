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


# --- construct_jagged_tensors(_inference) -----------------------------------------------------------------
from accel.modules.utils import construct_jagged_tensors, construct_jagged_tensors_inference  # noqa: E402
from accel.sparse import KeyedJaggedTensor  # noqa: E402


def _sequence_case():
    # keys a, b (B = 3): a = [[0, 1], [], [2]], b = [[3], [4, 5], []]; embedding row j = [j, 10 j].
    kjt = KeyedJaggedTensor(["a", "b"], torch.tensor([7, 8, 9, 1, 2, 3]), lengths=torch.tensor([2, 0, 1, 1, 2, 0]))
    rows = torch.stack([torch.arange(6.0), 10 * torch.arange(6.0)], dim=1)
    return kjt, rows


def test_construct_jagged_tensors_splits_rows_by_key():
    kjt, rows = _sequence_case()
    out = construct_jagged_tensors(rows, kjt, ["a", "b"], need_indices=True)
    assert list(out) == ["a", "b"]
    assert out["a"].values().tolist() == [[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]]
    assert out["a"].lengths().tolist() == [2, 0, 1] and out["a"].weights().tolist() == [7, 8, 9]
    assert out["b"].values()[:, 0].tolist() == [3.0, 4.0, 5.0] and out["b"].lengths().tolist() == [1, 2, 0]
    assert construct_jagged_tensors(rows, kjt, ["a", "b"])["b"].weights_or_none() is None


def test_construct_jagged_tensors_reverse_indices_and_column_shards():
    kjt = KeyedJaggedTensor(["a", "a2"], torch.tensor([5, 6, 5, 6]), lengths=torch.tensor([2, 0, 2, 0]))
    rows = torch.arange(8.0).view(4, 2)
    # One name twice: column shards of one feature, side by side (in permuted order when asked).
    out = construct_jagged_tensors(rows, kjt, ["e", "e"])
    assert out["e"].values().tolist() == [[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0]]
    permuted = construct_jagged_tensors(rows, kjt, ["e", "e"], features_to_permute_indices={"e": [1, 0]})
    assert permuted["e"].values().tolist() == [[4.0, 5.0, 0.0, 1.0], [6.0, 7.0, 2.0, 3.0]]
    # reverse_indices expands deduplicated rows: E = rows[reverse_indices].
    dedup = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    expanded = construct_jagged_tensors(dedup, kjt, ["x", "y"], reverse_indices=torch.tensor([0, 1, 1, 0]))
    assert expanded["x"].values().tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert expanded["y"].values().tolist() == [[2.0, 2.0], [1.0, 1.0]]


def test_construct_jagged_tensors_original_features_replace_features():
    kjt, rows = _sequence_case()
    other = KeyedJaggedTensor(["z"], torch.tensor([1]), lengths=torch.tensor([1]))
    out = construct_jagged_tensors(rows, other, ["a", "b"], original_features=kjt)
    assert out["b"].lengths().tolist() == [1, 2, 0]


def test_construct_jagged_tensors_errors():
    kjt, rows = _sequence_case()
    with pytest.raises(ValueError, match=r"embedding_names expected one name per feature \(2\), got 1"):
        construct_jagged_tensors(rows, kjt, ["a"])
    with pytest.raises(ValueError, match=r"embeddings expected shape \(6, D\) \(one row per id\), got \(5, 2\)"):
        construct_jagged_tensors(rows[:5], kjt, ["a", "b"])
    with pytest.raises(IndexError, match=r"reverse_indices expected row numbers in \[0, 6\), got 6 at position 0"):
        construct_jagged_tensors(rows, kjt, ["a", "b"], reverse_indices=torch.tensor([6, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"features_to_permute_indices\['e'\] expected a permutation of \[0, 1\]"):
        construct_jagged_tensors(rows, kjt, ["e", "e"], features_to_permute_indices={"e": [0, 0]})
    uneven = KeyedJaggedTensor(["a", "b"], torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"embedding name 'e' expected its features to hold the same number of ids \(1\), got 2"):
        construct_jagged_tensors(rows[:3], uneven, ["e", "e"])
    with pytest.raises(NotImplementedError, match="seq_vbe_ctx expected None"):
        construct_jagged_tensors(rows, kjt, ["a", "b"], seq_vbe_ctx=object())


def test_construct_jagged_tensors_inference_with_two_dimensional_lengths():
    lengths = torch.tensor([[2, 0], [1, 1]])
    rows = torch.arange(10.0).view(5, 2)  # one padding row past the 4 ids
    values = torch.tensor([3, 4, 5, 6])
    out = construct_jagged_tensors_inference(rows, lengths, values, ["a", "b"], need_indices=True, remove_padding=True)
    assert out["a"].values().tolist() == [[0.0, 1.0], [2.0, 3.0]] and out["a"].weights().tolist() == [3, 4]
    assert out["b"].values().tolist() == [[4.0, 5.0], [6.0, 7.0]] and out["b"].lengths().tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"embeddings expected shape \(4, D\)"):
        construct_jagged_tensors_inference(rows, lengths, values, ["a", "b"])
    with pytest.raises(ValueError, match="lengths expected a 2-D \\(F, B\\) tensor"):
        construct_jagged_tensors_inference(rows, lengths.view(-1), values, ["a", "b"])
    empty = construct_jagged_tensors_inference(torch.empty(0, 2), torch.zeros(1, 0, dtype=torch.int64), torch.empty(0), ["a"])
    assert tuple(empty["a"].values().shape) == (0, 2) and empty["a"].lengths().numel() == 0
