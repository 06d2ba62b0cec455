"""CPU kernels of accel.kernels.sequence_lookup against float64 NumPy loops: forward, backward, fused steps,
bindings and errors."""

import numpy as np
import pytest
import torch

from accel.kernels import sequence_lookup as sl
from refimpl import optim


def make(seed, B=3, rows=(5, 7), D=4, slots=((0, 0), (1, 1), (0, 1)), lengths=None, max_len=4):
    rng = np.random.default_rng(seed)
    tables = [rng.standard_normal((r, D)).astype(np.float32) for r in rows]
    F = max(k for k, _ in slots) + 1
    if lengths is None:
        lengths = rng.integers(0, max_len + 1, F * B)
        lengths[1::4] = 0
    key_rows = [min([rows[t] for k2, t in slots if k2 == k], default=min(rows)) for k in range(F)]
    ids = np.concatenate([rng.integers(0, key_rows[k], int(lengths[k * B:(k + 1) * B].sum())) for k in range(F)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return tables, ids.astype(np.int64), offsets, list(slots), B


def args(tables, ids, offsets, slots, B, dtype=torch.float32):
    key = torch.tensor([k for k, _ in slots], dtype=torch.int64)
    table = torch.tensor([t for _, t in slots], dtype=torch.int64)
    tensors = tables if isinstance(tables[0], torch.Tensor) else [torch.tensor(w, dtype=dtype) for w in tables]
    return tensors, torch.tensor(ids), torch.tensor(offsets), key, table, B


def reference(tables, ids, offsets, slots, B):
    """Rows W_{t_s}[i_j] for the ids of each slot's key, slot after slot (float64)."""
    rows = []
    for k, t in slots:
        for j in range(offsets[k * B], offsets[(k + 1) * B]):
            rows.append(np.asarray(tables[t], dtype=np.float64)[ids[j]])
    D = np.shape(tables[0])[1]
    return np.array(rows).reshape(-1, D)


def lookup_rows(ids, offsets, slots, B, g, table):
    """(ids, gradient rows) of one table's lookups, in output row order."""
    out_ids, rows, p = [], [], 0
    for k, t in slots:
        for j in range(offsets[k * B], offsets[(k + 1) * B]):
            if t == table:
                out_ids.append(ids[j])
                rows.append(g[p])
            p += 1
    return np.array(out_ids, np.int64), np.array(rows).reshape(-1, g.shape[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_rows_slot_after_slot(seed):
    case = make(seed)
    out = sl.sequence_lookup(*args(*case))
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), reference(*case).astype(np.float32))


def test_empty_feature_batch_zero_and_no_ids():
    case = make(3, lengths=np.array([0, 0, 0, 2, 1, 0]))
    np.testing.assert_array_equal(sl.sequence_lookup(*args(*case)).numpy(), reference(*case))
    tables, _, _, slots, _ = case
    out = sl.sequence_lookup(*args(tables, np.zeros(0, np.int64), np.zeros(1, np.int64), slots, 0))
    assert out.shape == (0, 4)


def test_duplicate_and_max_ids_and_long_bags():
    case = make(4, rows=(6, 6), lengths=np.array([33, 0, 32, 31, 1, 0]))
    case[1][:5] = 5  # ids
    np.testing.assert_array_equal(sl.sequence_lookup(*args(*case)).numpy(), reference(*case))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_double_tables(dtype):
    tables, ids, offsets, slots, B = make(5)
    typed = [torch.tensor(w, dtype=dtype) for w in tables]
    out = sl.sequence_lookup(*args(typed, ids, offsets, slots, B))
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # 16-bit values are exact in float32: the rows are the table's values unchanged.
    np.testing.assert_array_equal(out.double().numpy(), reference([t.double().numpy() for t in typed], ids,
                                                                  offsets, slots, B))


def test_gradcheck_float64():
    tables, ids, offsets, slots, B = make(6, rows=(3, 4), D=2, max_len=3)
    leaves = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in tables]
    rest = args(tables, ids, offsets, slots, B)[1:]
    assert torch.autograd.gradcheck(lambda a, b: sl.sequence_lookup([a, b], *rest), tuple(leaves))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_dense_gradients(dtype):
    tables, ids, offsets, slots, B = make(7, rows=(3, 4), max_len=6)
    leaves = [torch.tensor(w, dtype=dtype, requires_grad=True) for w in tables]
    out = sl.sequence_lookup(*args(leaves, ids, offsets, slots, B))
    g = np.random.default_rng(8).standard_normal(out.shape)
    out.backward(torch.tensor(g, dtype=torch.float32))
    for t, leaf in enumerate(leaves):
        want = np.zeros(leaf.shape)
        i, rows = lookup_rows(ids, offsets, slots, B, g.astype(np.float32).astype(np.float64), t)
        np.add.at(want, i, rows)
        assert leaf.grad.dtype == dtype
        tol = 1e-6 if dtype == torch.float32 else 2 ** -7
        np.testing.assert_allclose(leaf.grad.double().numpy(), want, rtol=tol, atol=1e-6)


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad"])
def test_fused_steps_follow_refimpl_optim(rule):
    tables, ids, offsets, slots, B = make(9, rows=(3, 4), max_len=5)
    live = [torch.tensor(w) for w in tables]
    state = [torch.tensor(optim.init_state(rule, *w.shape, np.float32)) for w in tables] if rule != "sgd" else []
    want_w = [w.copy() for w in tables]
    want_G = [s.numpy().copy() for s in state] or [None, None]
    rng = np.random.default_rng(10)
    for _ in range(3):
        out = sl.sequence_lookup_fused(*args(live, ids, offsets, slots, B), rule, 0.05, 1e-8, state)
        g = rng.standard_normal(out.shape).astype(np.float32)
        out.backward(torch.tensor(g))
        for t in range(2):
            i, rows = lookup_rows(ids, offsets, slots, B, g.astype(np.float64), t)
            want_w[t], want_G[t] = optim.apply_sparse_step(want_w[t], want_G[t], i, rows, rule, 0.05, 1e-8)
            np.testing.assert_allclose(live[t].numpy(), want_w[t], rtol=2e-6, atol=2e-6)
            if rule != "sgd":
                np.testing.assert_allclose(state[t].numpy(), want_G[t], rtol=2e-6, atol=1e-7)


def test_opcheck_ops():
    tables, ids, offsets, slots, B = make(11)
    a = args(tables, ids, offsets, slots, B)
    torch.library.opcheck(torch.ops.recspec.sequence_lookup.default, a)
    rows = reference(tables, ids, offsets, slots, B).shape[0]
    torch.library.opcheck(torch.ops.recspec.sequence_lookup_backward.default, (torch.ones(rows, 4), *a))
    state = [torch.zeros_like(t) for t in a[0]]
    trigger = torch.empty(0, requires_grad=True)
    torch.library.opcheck(torch.ops.recspec.sequence_lookup_fused.default, (*a, "adagrad", 0.1, 1e-8, state, trigger))
    torch.library.opcheck(torch.ops.recspec.sequence_lookup_fused_step.default,
                          (torch.ones(rows, 4), [t.clone() for t in a[0]], *a[1:], "adagrad", 0.1, 1e-8,
                           [s.clone() for s in state]))


def test_errors():
    tables, ids, offsets, slots, B = make(12)
    w, i, o, k, t, b = args(tables, ids, offsets, slots, B)
    with pytest.raises(ValueError, match=r"weights must all have the same embedding dim .* got dims \[4, 3\]"):
        sl.sequence_lookup([w[0], w[1][:, :3]], i, o, k, t, b)
    with pytest.raises(ValueError, match=r"slot_table must have one entry per slot \(3\), got 2"):
        sl.sequence_lookup(w, i, o, k, t[:2], b)
    with pytest.raises(ValueError, match=r"slot_table\[2\] must be in \[0, 2\) \(the number of tables\), got 2"):
        sl.sequence_lookup(w, i, o, k, torch.tensor([0, 1, 2]), b)
    with pytest.raises(TypeError, match="offsets must be int64, got torch.int32"):
        sl.sequence_lookup(w, i, o.int(), k, t, b)
    with pytest.raises(ValueError, match=r"grad must have shape \(ids looked up, D\)"):
        torch.ops.recspec.sequence_lookup_backward(torch.ones(1, 4), w, i, o, k, t, b)


def test_matches_torchrec_embedding_collection():
    pytest.importorskip("torchrec", reason="TorchRec is an optional comparison; CI runs without it")
    from torchrec.modules.embedding_configs import EmbeddingConfig
    from torchrec.modules.embedding_modules import EmbeddingCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    torch.manual_seed(1)
    ec = EmbeddingCollection(tables=[EmbeddingConfig(num_embeddings=5, embedding_dim=4, name="t0", feature_names=["a"]),
                                     EmbeddingConfig(num_embeddings=7, embedding_dim=4, name="t1",
                                                     feature_names=["b", "a"])])
    # KJT keys [b, a]: slots (key, table) in table then feature order: a@t0, b, a@t1.
    _, ids, offsets, slots, B = make(13, rows=(5, 7), slots=((1, 0), (0, 1), (1, 1)))
    kjt = KeyedJaggedTensor(keys=["b", "a"], values=torch.tensor(ids), lengths=torch.tensor(np.diff(offsets)))
    want = ec(kjt)
    weights = [ec.embeddings["t0"].weight.detach(), ec.embeddings["t1"].weight.detach()]
    got = sl.sequence_lookup(*args(weights, ids, offsets, slots, B))
    expected = torch.cat([want[name].values() for name in ("a@t0", "b", "a@t1")])
    np.testing.assert_array_equal(got.numpy(), expected.detach().numpy())
