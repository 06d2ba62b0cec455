"""Conditioning: the spread of refimpl's float64 result under operand perturbations."""

import numpy as np

from conformance import conditioning
from conformance.adapters import construct, exercise, torch_state
from conformance.records import Act, Build


def test_perturb_moves_each_element_by_at_most_rel():
    rng = np.random.default_rng(0)
    x = np.linspace(1.0, 2.0, 50)
    moved = conditioning.perturb(x, rng, 1e-3)
    assert np.all(np.abs(moved / x - 1) <= 1e-3) and not np.array_equal(moved, x)
    listed = conditioning.perturb([x, -x], rng, 1e-3)
    assert len(listed) == 2 and listed[1].shape == x.shape


def test_spread_is_small_where_well_conditioned_and_large_where_not():
    # A saturated sigmoid is ill-conditioned in relative terms: sigma(z) for z = -40 moves by
    # about |z| x rel when z moves by rel, while at z = 0.5 it moves by about rel / 4.
    state = {"_linear.weight": np.array([[1.0]])}
    sig = Build("Perceptron", (1, 1), (("bias", False), ("activation", Act("sigmoid"))))
    rel = 1e-10
    spread = conditioning.Spread(sig, state, rel, np.random.default_rng(0))
    ref = construct(sig, "refimpl")
    ref.load_state_dict(state)
    calm = np.array([[0.5]])
    wild = np.array([[-40.0]])
    s_calm = conditioning.spread(ref(calm), spread.outputs(calm))
    s_wild = conditioning.spread(ref(wild), spread.outputs(wild))
    assert s_calm < 2 * rel
    assert s_wild > 10 * rel


def test_spread_of_gradients_matches_their_names():
    build = Build("CrossNet", (3, 1), in_shape=(3,))
    state = exercise(torch_state(construct(build, "accel")), 0)
    spread = conditioning.Spread(build, state, 1e-12, np.random.default_rng(1))
    x = np.ones((2, 3))
    moved = spread.gradients(x, np.ones((2, 3)))
    assert len(moved) == conditioning.DRAWS
    y, grads = moved[0]
    assert y.shape == (2, 3) and set(grads) == {"grad input", "grad kernels.0", "grad bias.0"}
    assert conditioning.spread(np.zeros(2), []) == 0.0
