"""refimpl.modules.utils: callable extraction, output-dimension probes, TorchRec's initialisers and
the per-feature JaggedTensors of sequence embeddings."""

import math

import numpy as np
import pytest

from refimpl.modules.activation import SwishLayerNorm, relu
from refimpl.modules.mlp import MLP, Perceptron
from refimpl.modules.utils import (
    check_module_output_dimension,
    construct_jagged_tensors,
    construct_jagged_tensors_inference,
    extract_module_or_tensor_callable,
    get_module_output_dimension,
    init_mlp_weights_xavier_uniform,
    xavier_normal,
    xavier_uniform,
)
from refimpl.nn import Linear
from refimpl.sparse import KeyedJaggedTensor


def test_extract_module_or_tensor_callable_rule():
    made = extract_module_or_tensor_callable(lambda: SwishLayerNorm(2))
    assert isinstance(made, SwishLayerNorm)
    fn = lambda z: z  # noqa: E731
    assert extract_module_or_tensor_callable(fn) is fn
    instance = SwishLayerNorm(2)
    assert extract_module_or_tensor_callable(instance) is instance
    assert extract_module_or_tensor_callable(relu) is relu
    with pytest.raises(ValueError, match="module_or_callable: expected a callable .* got one returning int"):
        extract_module_or_tensor_callable(lambda: 3)


def test_extract_propagates_other_type_errors():
    def broken():
        raise TypeError("unsupported operand")

    with pytest.raises(TypeError, match="unsupported operand"):
        extract_module_or_tensor_callable(broken)


def test_output_dimension_helpers():
    rng = np.random.default_rng(0)
    assert get_module_output_dimension(MLP(5, [4, 3], rng=rng), 5) == 3
    assert get_module_output_dimension(lambda x: np.concatenate([x, x], axis=-1), 2) == 4
    linears = [Linear(4, 2, rng=rng), [Linear(4, 2, rng=rng)]]
    assert check_module_output_dimension(linears, 4, 2)
    assert not check_module_output_dimension(linears + [Linear(4, 3, rng=rng)], 4, 2)


def test_init_mlp_weights_xavier_uniform():
    m = Linear(3, 2, rng=np.random.default_rng(0))
    init_mlp_weights_xavier_uniform(m, np.random.default_rng(12))
    bound = math.sqrt(6 / (3 + 2))
    expected = np.random.default_rng(12).uniform(-bound, bound, (2, 3))
    np.testing.assert_array_equal(m.state_dict()["weight"], expected)
    np.testing.assert_array_equal(m.state_dict()["bias"], np.zeros(2))
    with pytest.raises(ValueError, match="m expected a Linear with a bias, got one with bias=False"):
        no_bias = Linear(3, 2, bias=False, rng=np.random.default_rng(0))
        init_mlp_weights_xavier_uniform(no_bias, np.random.default_rng(0))


def test_init_leaves_other_modules_unchanged():
    p = Perceptron(3, 2, rng=np.random.default_rng(0))
    before = {k: v.copy() for k, v in p.state_dict().items()}
    init_mlp_weights_xavier_uniform(p, np.random.default_rng(0))
    for k, v in p.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize(
    "shape, fan_in, fan_out",
    [((4, 3), 3, 4), ((5, 4, 2), 8, 10), ((2, 2, 3, 4), 24, 24)],
)
def test_xavier_fan_rules(shape, fan_in, fan_out):
    std = math.sqrt(2 / (fan_in + fan_out))
    expected = std * np.random.default_rng(3).standard_normal(shape)
    np.testing.assert_allclose(xavier_normal(shape, np.random.default_rng(3)), expected, rtol=1e-15)
    bound = math.sqrt(6 / (fan_in + fan_out))
    np.testing.assert_array_equal(
        xavier_uniform(shape, np.random.default_rng(3)), np.random.default_rng(3).uniform(-bound, bound, shape)
    )


def test_xavier_dtype_and_errors():
    assert xavier_normal((3, 2), np.random.default_rng(0), np.float32).dtype == np.float32
    with pytest.raises(ValueError, match=r"shape expected at least 2 dimensions, got \(3,\)"):
        xavier_normal((3,), np.random.default_rng(0))


# --- construct_jagged_tensors(_inference) (semantics.md 10) ---------------------------------------------
def _page_kjt():
    # f1 = [[0, 1], [], [2]], f2 = [[3], [4], [5, 6, 7]]
    return KeyedJaggedTensor(["f1", "f2"], np.arange(8), offsets=np.array([0, 2, 2, 3, 4, 5, 8]))


def _rows(n, D=2):
    """Row j is [10 j, 10 j + 1, ...]: each embedding row says which id position it came from."""
    return 10.0 * np.arange(n)[:, None] + np.arange(D)[None, :]


def test_construct_jagged_tensors_splits_per_key():
    out = construct_jagged_tensors(_rows(8), _page_kjt(), ["f1", "f2"], need_indices=True)
    assert list(out) == ["f1", "f2"]
    np.testing.assert_array_equal(out["f1"].values(), _rows(8)[:3])
    np.testing.assert_array_equal(out["f2"].values(), _rows(8)[3:])
    np.testing.assert_array_equal(out["f1"].lengths(), [2, 0, 1])
    np.testing.assert_array_equal(out["f2"].lengths(), [1, 1, 3])
    np.testing.assert_array_equal(out["f2"].weights(), [3, 4, 5, 6, 7])
    assert construct_jagged_tensors(_rows(8), _page_kjt(), ["a", "b"])["a"].weights_or_none() is None


def test_construct_jagged_tensors_joins_column_shards_in_permuted_order():
    kjt = _page_kjt().permute([0, 0])  # one feature, two column-wise shards
    emb = _rows(6)
    out = construct_jagged_tensors(emb, kjt, ["f1", "f1"])
    np.testing.assert_array_equal(out["f1"].values(), np.hstack([emb[:3], emb[3:]]))
    swapped = construct_jagged_tensors(emb, kjt, ["f1", "f1"], features_to_permute_indices={"f1": [1, 0]})
    np.testing.assert_array_equal(swapped["f1"].values(), np.hstack([emb[3:], emb[:3]]))


def test_construct_jagged_tensors_original_features_and_reverse_indices():
    reverse = np.array([7, 6, 5, 4, 3, 2, 1, 0])
    other = KeyedJaggedTensor(["x"], np.arange(3), lengths=np.array([1, 1, 1]))
    out = construct_jagged_tensors(_rows(8), other, ["f1", "f2"], original_features=_page_kjt(), reverse_indices=reverse)
    np.testing.assert_array_equal(out["f1"].values(), _rows(8)[[7, 6, 5]])


def test_construct_jagged_tensors_inference():
    lengths = np.array([[2, 0, 1], [1, 1, 3]])
    values = np.arange(8)
    padded = np.vstack([_rows(8), np.full((2, 2), -1.0)])
    out = construct_jagged_tensors_inference(padded, lengths, values, ["f1", "f2"], need_indices=True, remove_padding=True)
    np.testing.assert_array_equal(out["f2"].values(), _rows(8)[3:])
    np.testing.assert_array_equal(out["f1"].lengths(), [2, 0, 1])
    np.testing.assert_array_equal(out["f1"].weights(), [0, 1, 2])
    with pytest.raises(ValueError, match=r"embeddings expected shape \(8, D\) \(one row per id\), got \(10, 2\)"):
        construct_jagged_tensors_inference(padded, lengths, values, ["f1", "f2"])


def test_construct_jagged_tensors_errors():
    kjt = _page_kjt()
    with pytest.raises(ValueError, match=r"embedding_names expected 2 names \(one per key\), got 1"):
        construct_jagged_tensors(_rows(8), kjt, ["f1"])
    with pytest.raises(ValueError, match=r"features_to_permute_indices\['f1'\] expected a permutation of \[0, 1\]"):
        construct_jagged_tensors(_rows(6), kjt.permute([0, 0]), ["f1", "f1"], features_to_permute_indices={"f1": [0, 0]})
    with pytest.raises(ValueError, match="embedding 'f' expected its keys to hold equally many ids to join them, got 3"):
        construct_jagged_tensors(_rows(8), kjt, ["f", "f"])
    with pytest.raises(IndexError, match=r"reverse_indices expected rows in \[0, 8\), got 8 at position 0"):
        construct_jagged_tensors(_rows(8), kjt, ["f1", "f2"], reverse_indices=np.array([8]))
    with pytest.raises(NotImplementedError, match="seq_vbe_ctx expected None"):
        construct_jagged_tensors(_rows(8), kjt, ["f1", "f2"], seq_vbe_ctx=object())
    with pytest.raises(ValueError, match=r"lengths expected a 2-D \(F, B\) array, got shape \(6,\)"):
        construct_jagged_tensors_inference(_rows(8), np.ones(6, np.int64), np.arange(8), ["f1", "f2"])


def test_construct_jagged_tensors_agrees_with_torchrec():
    pytest.importorskip("torchrec", reason="TorchRec is an optional extra; the tests above stand without it")
    import torch
    from torchrec.modules import utils as tutils
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor as TKJT

    kjt = TKJT(keys=["a", "b", "a"], values=torch.tensor([1, 2, 3, 4, 5, 6]), lengths=torch.tensor([2, 0, 1, 1, 1, 1]))
    emb = torch.from_numpy(_rows(6, 3))
    kwargs = dict(need_indices=True, features_to_permute_indices={"a": [1, 0]})
    theirs = tutils.construct_jagged_tensors(emb, kjt, ["a", "b", "a"], **kwargs)
    lengths = np.array([[2, 0], [1, 1], [1, 1]])
    for mine in (
        construct_jagged_tensors_inference(emb, lengths, kjt.values(), ["a", "b", "a"], **kwargs),
        construct_jagged_tensors(emb, kjt, ["a", "b", "a"], **kwargs),  # TorchRec's KJT read through its accessors
    ):
        assert list(mine) == list(theirs)
        for name in theirs:
            np.testing.assert_array_equal(mine[name].values(), theirs[name].values().numpy())
            np.testing.assert_array_equal(mine[name].lengths(), theirs[name].lengths().numpy())
            np.testing.assert_array_equal(mine[name].weights(), theirs[name].weights().numpy())
