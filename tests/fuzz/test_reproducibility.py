"""CPU results are bitwise reproducible run to run: every accel module with a Numba CPU kernel, given the same
input, gives the same bytes, twice in one process and once more in a fresh interpreter.

`fingerprints()` runs each case (SwishLayerNorm, FM, the cross nets, EBC/EC forward and backward, the fused
optimizer steps, position weights, MCH remap and eviction) from a fixed seed and returns, per case, the SHA-256
of the bytes of every output, gradient and updated state. Shapes are past the kernels' 256-lane row sums and
span several chunks, with empty bags, so the fixed summation orders are what is being checked.

Both runs are fresh interpreters (python -c) building the kernels users run (NUMBA_BOUNDSCHECK=0, disk cache
on): the first compiles them or loads them from the cache and fingerprints twice, the second loads what the
first left in the cache, with its own thread pool, and must agree byte for byte. Running them apart also keeps
this test off the suite's bounds-checked builds, which are never cached: under NUMBA_BOUNDSCHECK=1 each fresh
interpreter would compile every kernel again.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous() if torch.is_tensor(t) else torch.as_tensor(t)
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _dense(module, x, extra=()):
    x = x.clone().requires_grad_(True)
    y = module(x)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    module.zero_grad(set_to_none=True)
    y.backward(g)
    return _digest(y, x.grad, *[p.grad for p in module.parameters()], *extra)


def _kjt(keys, batch, seed, rows, weighted=False):
    import accel

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 6, (len(keys) * batch,), generator=gen)
    lengths[::5] = 0  # empty bags
    ids = torch.randint(0, rows, (int(lengths.sum()),), generator=gen)
    weights = torch.rand(ids.shape[0], generator=gen) if weighted else None
    return accel.KeyedJaggedTensor(keys, ids, weights=weights, lengths=lengths)


def _collections():
    import accel

    out = {}
    for kind, optimizer in (("ebc", None), ("ebc", "sgd"), ("ebc", "adagrad"), ("ebc", "rowwise_adagrad"),
                            ("weighted ebc", None), ("ec", None), ("ec", "rowwise_adagrad")):
        torch.manual_seed(3)
        extra = {} if optimizer is None else {"optimizer": optimizer, "lr": 0.1}
        if kind == "ec":
            tables = [accel.EmbeddingConfig(num_embeddings=50, embedding_dim=40, name="t", feature_names=["a", "b"])]
            module = accel.EmbeddingCollection(tables, **extra)
        else:
            tables = [accel.EmbeddingBagConfig(num_embeddings=50, embedding_dim=40, name="t1", feature_names=["a"]),
                      accel.EmbeddingBagConfig(num_embeddings=30, embedding_dim=20, name="t2", feature_names=["b"],
                                               pooling=accel.PoolingType.MEAN)]
            module = accel.EmbeddingBagCollection(tables, is_weighted=kind == "weighted ebc", **extra)
        parts = []
        for step in range(2):
            kjt = _kjt(["a", "b"], 16, step, 30, weighted=kind == "weighted ebc")
            result = module(kjt)
            values = [result[k].values() for k in ("a", "b")] if kind == "ec" else [result.values()]
            loss = sum((v * torch.linspace(-1, 1, v.numel()).reshape(v.shape)).sum() for v in values)
            module.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            parts += values + grads + [p.detach() for p in module.parameters()]
        parts += list(module.optimizer_state().values()) if optimizer else []
        out[f"{kind} {optimizer or 'autograd'}"] = _digest(*parts)
    return out


def _position_weights():
    import accel

    module = accel.PositionWeightedModule({"a": 8})
    with torch.no_grad():
        module.position_weights["a"].copy_(torch.linspace(0.5, 2, 8))
    kjt = _kjt(["a"], 300, 7, 100)
    lengths = kjt.lengths().clamp(max=8)
    jt = accel.JaggedTensor(kjt.values()[: int(lengths.sum())], lengths=lengths)
    out = module({"a": jt})["a"].weights()
    out.backward(torch.linspace(-1, 1, out.numel()))
    return _digest(out, module.position_weights["a"].grad)


def _mch(policy_name):
    import accel

    policy = {"LFU": accel.LFU_EvictionPolicy, "LRU": accel.LRU_EvictionPolicy,
              "DLFU": accel.DistanceLFU_EvictionPolicy}[policy_name]()
    module = accel.MCHManagedCollisionModule(zch_size=64, device=torch.device("cpu"), eviction_policy=policy,
                                             eviction_interval=2)
    gen = torch.Generator().manual_seed(11)
    parts = []
    for _ in range(6):
        ids = torch.randint(-(2**62), 2**62, (200,), generator=gen)
        ids[::3] = ids[::3] % 97  # frequent ids, so that counts and ties matter
        out = module({"f": accel.JaggedTensor(ids, lengths=torch.tensor([120, 0, 80]))})["f"].values()
        evicted = module.evict()
        parts += [out] + ([] if evicted is None else [evicted])
    parts += list(module.state_dict().values())
    return _digest(*parts)


def fingerprints() -> dict:
    """case -> SHA-256 of all its results' bytes, computed from fixed seeds."""
    import accel

    torch.manual_seed(0)
    prints = {}
    x = torch.randn(37, 300)
    # float32 only: the float64 builds run the same code, and each dtype is another compilation.
    for dtype in (torch.float32,):
        xs = x.to(dtype)
        torch.manual_seed(1)
        modules = {"SwishLayerNorm": accel.SwishLayerNorm(300), "VectorCrossNet": accel.VectorCrossNet(300, 2),
                   "CrossNet": accel.CrossNet(300, 2), "LowRankCrossNet": accel.LowRankCrossNet(300, 2, 8)}
        for name, module in modules.items():
            prints[f"{name} {dtype}"] = _dense(module.to(dtype), xs)
        fm = accel.FactorizationMachine()
        e = xs.reshape(37, 30, 10).clone().requires_grad_(True)
        y = fm([e, xs[:, :5]])
        y.backward(torch.linspace(-1, 1, 37, dtype=dtype).reshape(37, 1))
        prints[f"FactorizationMachine {dtype}"] = _digest(y, e.grad)
    prints.update(_collections())
    prints["PositionWeightedModule"] = _position_weights()
    for policy in ("LFU", "LRU", "DLFU"):
        prints[f"MCH {policy}"] = _mch(policy)
    return prints


def _fresh_interpreter(times: int) -> list:
    code = ("import json; from tests.fuzz.test_reproducibility import fingerprints; "
            f"print(json.dumps([fingerprints() for _ in range({times})]))")
    env = dict(os.environ, NUMBA_BOUNDSCHECK="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _differ(a: dict, b: dict) -> list:
    assert sorted(a) == sorted(b)
    return sorted(k for k in a if a[k] != b[k])


def test_cpu_results_are_bitwise_reproducible_in_process_and_in_a_fresh_interpreter():
    first, second = _fresh_interpreter(2)
    assert not _differ(first, second), f"results differ run to run in one process: {_differ(first, second)}"
    (fresh,) = _fresh_interpreter(1)
    assert not _differ(first, fresh), f"results differ in a fresh interpreter: {_differ(first, fresh)}"


def test_fingerprints_tell_one_bit_apart():
    # The comparison above is only as good as the digest: a single flipped bit must change it.
    a = torch.linspace(-1, 1, 10)
    b = a.clone()
    b.view(torch.int32)[3] ^= 1
    assert not torch.equal(a, b)
    assert _digest(a) != _digest(b)
    assert _digest(a) == _digest(a.clone())
