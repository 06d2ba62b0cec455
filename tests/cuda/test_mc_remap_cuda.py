"""CUDA kernel of accel.kernels.mc_remap on a GPU or Numba's simulator, against NumPy's searchsorted formula;
and the MCH module's remap taking the CUDA launch path (CPU tensors inside simulated_cuda() under the
simulator, CUDA tensors on a device). Shapes stay tiny: the simulator runs every thread in Python."""

import numpy as np
import pytest
import torch
from numba import cuda

from accel.kernels import _device, mc_remap
from accel.modules import mc_modules as mc
from accel.sparse import JaggedTensor

pytestmark = pytest.mark.cuda

MAX = np.iinfo(np.int64).max


def numpy_remap(raw, mapping, values, miss):
    """out_j = map[pos_j] if raw[pos_j] == v_j else miss, pos_j = searchsorted_left(raw[:Z-1], v_j)."""
    pos = np.searchsorted(raw[:-1], values, side="left")
    return np.where(raw[pos] == values, mapping[pos], miss)


@pytest.mark.parametrize("Z,filled", [(1, 0), (6, 4), (9, 8)])
def test_launch_layer_matches_the_formula(Z, filled, ran_on):
    rng = np.random.default_rng(Z)
    raw = np.full(Z, MAX, np.int64)
    raw[:filled] = np.sort(rng.choice(np.arange(-20, 20), filled, replace=False))
    mapping = rng.permutation(Z).astype(np.int64) + 5
    values = np.concatenate([rng.integers(-25, 25, 40), raw[:filled], [MAX]]).astype(np.int64)
    out = cuda.device_array(values.shape[0], np.int64)
    mc_remap.launch_cuda_remap(cuda.to_device(raw), cuda.to_device(mapping), cuda.to_device(values), 5 + Z - 1, out)
    ran_on(mc_remap._cuda_kernels())
    np.testing.assert_array_equal(out.copy_to_host(), numpy_remap(raw, mapping, values, 5 + Z - 1))


def _on_cuda_path(backend):
    # CPU tensors inside simulated_cuda() under the simulator; real CUDA tensors on a device.
    if backend == "simulator":
        return _device.simulated_cuda(), torch.device("cpu")
    return torch.cuda.device(0), torch.device("cuda")


def test_module_remap_takes_the_cuda_path(backend, ran_on):
    block, device = _on_cuda_path(backend)
    m = mc.MCHManagedCollisionModule(5, device, mc.LFU_EvictionPolicy(), 1)
    jt = JaggedTensor(torch.tensor([10, 20, 20, 30], device=device), lengths=torch.tensor([4], device=device))
    with block as launches:
        out = m({"t": jt})["t"].values()
        again = m.remap({"t": JaggedTensor(torch.tensor([30, 40, 10], device=device),
                                           lengths=torch.tensor([3], device=device))})["t"].values()
    ran_on(mc_remap._cuda_kernels())
    if backend == "simulator":
        assert launches.count >= 2
    # semantics.md TV1, step 1: freq order 20, 10, 30 fill the highest empty slots below the sentinel.
    assert out.cpu().tolist() == [2, 1, 1, 3]
    assert again.cpu().tolist() == [3, 4, 2]
    assert m.evict().cpu().tolist() == [1, 2, 3]
