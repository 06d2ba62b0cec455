"""CUDA kernels of accel.kernels.sparse_optim (row-grouped gradient, rules, per-sample weight gradient) on a GPU
or Numba's simulator, against refimpl.optim and float64 NumPy loops. The grouping fed to the launch layer comes
from the CPU counting sort (tested against a NumPy loop in tests/accel/kernels/test_sparse_optim.py)."""

import dataclasses

import numpy as np
import pytest
import torch
from numba import cuda

from accel.kernels import _jagged
from accel.kernels import sparse_optim as so
from refimpl import optim

pytestmark = pytest.mark.cuda

needs_device = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch CUDA tensors need a real GPU")

D = 3
B = 2
# Pooled layout over keys 0 and 1: slot (key, table); gradient rows [B, 9] with slot s in columns 3s..3s+2.
SLOTS = [(0, 0), (1, 1), (0, 1)]
LENGTHS = np.array([2, 1, 0, 2])
IDS = np.array([1, 1, 0, 3, 1], np.int64)
PSW = np.array([0.5, 2.0, 1.0, -1.0, 1.5], np.float32)


def lookups():
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)
    key = np.array([k for k, _ in SLOTS], np.int64)
    return so.Lookups(
        indices=torch.tensor(IDS), offsets=torch.tensor(offsets), batch_size=B, slot_key=key,
        slot_table=np.array([t for _, t in SLOTS], np.int64), goff0=np.arange(3, dtype=np.int64) * D,
        bag_stride=np.full(3, 3 * D, np.int64), value_stride=np.zeros(3, np.int64), first=offsets[key * B],
        count=offsets[(key + 1) * B] - offsets[key * B], per_sample_weights=torch.tensor(PSW), mean=True,
    )


def device_args(ts):
    host = _jagged.table_args(ts, torch.float32, torch.device("cpu"))
    return dataclasses.replace(host, wide=tuple(map(cuda.to_device, host.wide)),
                               half=tuple(map(cuda.to_device, host.half)),
                               table_format=cuda.to_device(host.table_format),
                               table_index=cuda.to_device(host.table_index))


def per_lookup_rows(g, table):
    """(ids, w_j / L_b * g[b, slot columns]) of one table's lookups (float64 loops)."""
    o = np.concatenate([[0], np.cumsum(LENGTHS)])
    ids, rows = [], []
    for s, (k, t) in enumerate(SLOTS):
        for b in range(B):
            lo, hi = o[k * B + b], o[k * B + b + 1]
            for j in range(lo, hi):
                if t == table:
                    ids.append(IDS[j])
                    rows.append(PSW[j] / (hi - lo) * g[b, 3 * s:3 * s + 3])
    return np.array(ids, np.int64), np.array(rows).reshape(-1, D)


def launch(ts, targets, state, rule, want_psw):
    lk = lookups()
    groups = so.group_rows(lk, np.array([t.shape[0] for t in ts], np.int64), torch.float32)
    g = np.random.default_rng(0).standard_normal((B, 3 * D)).astype(np.float32)
    fields = tuple(cuda.to_device(f.numpy()) for f in (groups.goff, groups.coef, groups.scale, groups.occ,
                                                       groups.uniq_table, groups.uniq_row, groups.uniq_ptr))
    state_dev = [cuda.to_device(s.numpy()) for s in state]
    dummy2, dummy1 = cuda.to_device(np.zeros((1, 1), np.float32)), cuda.to_device(np.zeros(1, np.float32))
    state2 = _jagged.padded([s for s in state_dev if s.ndim == 2], dummy2)
    state1 = _jagged.padded([s for s in state_dev if s.ndim == 1], dummy1)
    psw_occ = cuda.to_device(np.zeros(int(groups.occ_start[-1]) if want_psw else 0, np.float32))
    so.launch_cuda_apply(cuda.to_device(g.reshape(-1)), fields, device_args(ts), targets, state2, state1, rule, 0.1,
                         1e-8, want_psw, psw_occ, D)
    return g, groups, psw_occ, state_dev


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_launch_layer_rules_against_refimpl(rule, dtype, ran_on):
    rng = np.random.default_rng(1)
    ts = [torch.tensor(rng.standard_normal((r, D)), dtype=dtype) for r in (3, 4)]
    state = [torch.tensor(optim.init_state(rule, *t.shape, np.float32)) + 0.25 for t in ts] if rule != "sgd" else []
    args = device_args(ts)
    g, _, _, state_dev = launch(ts, args, state, so.RULES[rule], False)
    ran_on(so._cuda_kernels())
    for t in range(2):
        ids, rows = per_lookup_rows(g.astype(np.float64), t)
        G0 = state[t].numpy() if rule != "sgd" else None
        want_w, want_G = optim.apply_sparse_step(ts[t].float().numpy(), G0, ids, rows, rule, 0.1, 1e-8)
        got = args.wide[t].copy_to_host() if dtype == torch.float32 else \
            torch.from_numpy(args.half[t].copy_to_host().view(np.int16)).view(dtype).double().numpy()
        want = torch.tensor(want_w).to(dtype).double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == torch.float32 else 2 ** -7, atol=1e-6)
        if rule != "sgd":
            np.testing.assert_allclose(state_dev[t].copy_to_host(), want_G, rtol=1e-6)


def test_launch_layer_dense_gradient_and_psw_gradient(ran_on):
    rng = np.random.default_rng(2)
    ts = [torch.tensor(rng.standard_normal((r, D)), dtype=torch.float32) for r in (3, 4)]
    grads = [torch.zeros_like(t) for t in ts]
    grad_args = device_args(grads)
    g, groups, psw_occ, _ = launch(ts, grad_args, [], so.WRITE, True)
    lk = lookups()
    group_ptr, group_slots = so._key_groups(lk)
    dw = cuda.to_device(np.zeros(IDS.size, np.float32))
    so.launch_cuda_psw_reduce(psw_occ, *(cuda.to_device(a) for a in (group_ptr, group_slots, lk.first, lk.count,
                                                                       groups.occ_start)), dw, int(lk.count.max()))
    ran_on(so._cuda_kernels())
    for t in range(2):
        ids, rows = per_lookup_rows(g.astype(np.float64), t)
        want = np.zeros(ts[t].shape)
        np.add.at(want, ids, rows)
        np.testing.assert_allclose(grad_args.wide[t].copy_to_host(), want, rtol=1e-6, atol=1e-7)
    # dw_j = sum over the slots reading j of (1 / L_b) <g[b, slot columns], W_t[i_j]>.
    o = np.concatenate([[0], np.cumsum(LENGTHS)])
    want_dw = np.zeros(IDS.size)
    for s, (k, t) in enumerate(SLOTS):
        for b in range(B):
            lo, hi = o[k * B + b], o[k * B + b + 1]
            for j in range(lo, hi):
                want_dw[j] += g[b, 3 * s:3 * s + 3].astype(np.float64) @ ts[t].double().numpy()[IDS[j]] / (hi - lo)
    np.testing.assert_allclose(dw.copy_to_host(), want_dw, rtol=1e-6, atol=1e-7)


@needs_device
def test_torch_cuda_row_step_matches_the_cpu(ran_on):
    rng = np.random.default_rng(3)
    ts = [torch.tensor(rng.standard_normal((r, D)), dtype=torch.float32) for r in (3, 4)]
    state = [torch.zeros(t.shape[0]) for t in ts]
    g = torch.tensor(rng.standard_normal(B * 3 * D), dtype=torch.float32)
    lk = lookups()
    cpu_dw = so.row_step(g, lk, ts, ts, state, so.ROWWISE_ADAGRAD, 0.1, 1e-8, True)
    cuda_ts = [torch.tensor(rng.standard_normal((r, D)), dtype=torch.float32) for r in (3, 4)]
    dev = [t.cuda() for t in cuda_ts]
    lk_dev = dataclasses.replace(lk, indices=lk.indices.cuda(), offsets=lk.offsets.cuda(),
                                 per_sample_weights=lk.per_sample_weights.cuda())
    dev_dw = so.row_step(g.cuda(), lk_dev, dev, dev, [torch.zeros(t.shape[0], device="cuda") for t in ts],
                         so.ROWWISE_ADAGRAD, 0.1, 1e-8, True)
    assert dev_dw.device.type == "cuda" and cpu_dw.shape == dev_dw.shape
    ran_on(so._cuda_kernels())
