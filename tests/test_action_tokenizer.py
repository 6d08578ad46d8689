"""ActionTokenizer: quantile bins for dx..dyaw, binary gripper, round trips and serialisation."""

import json

import numpy as np
import pytest

from lapa.policy.action_tokenizer import GRIPPER_INDEX, ActionTokenizer


def _actions(n: int = 5000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.empty((n, 7))
    a[:, 0] = rng.normal(0.0, 0.01, n)  # dx: Gaussian
    a[:, 1] = rng.uniform(-0.02, 0.02, n)  # dy: uniform
    a[:, 2] = np.where(rng.random(n) < 0.7, 0.0, rng.normal(0, 0.005, n))  # dz: mostly exactly 0
    a[:, 3] = 0.0  # droll: constant
    a[:, 4] = rng.exponential(0.01, n)  # dpitch: skewed
    a[:, 5] = rng.normal(0.0, 0.05, n)  # dyaw
    a[:, 6] = (rng.random(n) < 0.5).astype(float)  # gripper
    return a


@pytest.fixture(scope="module")
def tok() -> ActionTokenizer:
    return ActionTokenizer.fit_new(_actions(), num_bins=256)


def test_round_trip_within_half_a_bin(tok):
    a = _actions(2000, seed=1)
    bins = tok.encode(a)
    assert bins.dtype == np.int64 and bins.shape == a.shape
    assert bins.min() >= 0 and bins.max() < 256
    out = tok.decode(bins)
    assert out.dtype == np.float32 and out.shape == a.shape
    edges, widths = tok.edges, tok.bin_widths()
    for d in range(6):
        inside = (a[:, d] >= edges[d, 0]) & (a[:, d] <= edges[d, -1])
        assert inside.mean() > 0.95
        half = widths[d, bins[inside, d]] / 2
        err = np.abs(out[inside, d].astype(np.float64) - a[inside, d])
        assert np.all(err <= half + 1e-6), d
    np.testing.assert_array_equal(out[:, GRIPPER_INDEX], a[:, GRIPPER_INDEX])


def test_repeated_values_decode_exactly(tok):
    a = np.zeros((3, 7))
    out = tok.decode(tok.encode(a))
    assert out[0, 2] == 0.0 and out[0, 3] == 0.0  # dz (70% zeros) and the constant droll


def test_outliers_clip_to_the_end_bins(tok):
    a = np.zeros((2, 7))
    a[0, :6], a[1, :6] = -10.0, 10.0
    bins = tok.encode(a)
    assert np.all(bins[0, :6] == 0) and np.all(bins[1, :6] == 255)
    out = tok.decode(bins)
    assert np.all(out[0, :6] >= tok.edges[:, 0] - 1e-7) and np.all(out[1, :6] <= tok.edges[:, -1] + 1e-7)


def test_encode_is_monotonic(tok):
    a = np.zeros((1000, 7))
    a[:, 0] = np.linspace(-0.05, 0.05, 1000)
    assert np.all(np.diff(tok.encode(a)[:, 0]) >= 0)


def test_gripper_is_binary(tok):
    a = np.zeros((4, 7))
    a[:, GRIPPER_INDEX] = [0.0, 0.49, 0.5, 1.0]
    assert tok.encode(a)[:, GRIPPER_INDEX].tolist() == [0, 0, 255, 255]
    bins = np.zeros((256, 7), dtype=np.int64)
    bins[:, GRIPPER_INDEX] = np.arange(256)
    g = tok.decode(bins)[:, GRIPPER_INDEX]
    assert set(g.tolist()) == {0.0, 1.0} and g[127] == 0.0 and g[128] == 1.0


def test_quantile_stats_recorded(tok):
    a = _actions()
    np.testing.assert_allclose(tok.stats["q01"], np.quantile(a, 0.01, axis=0))
    np.testing.assert_allclose(tok.stats["q99"], np.quantile(a, 0.99, axis=0))
    np.testing.assert_allclose(tok.edges[:, 0], np.quantile(a[:, :6], 0.01, axis=0))
    np.testing.assert_allclose(tok.edges[:, -1], np.quantile(a[:, :6], 0.99, axis=0))


def test_dict_round_trip_through_json(tok):
    again = ActionTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again == tok
    a = _actions(100, seed=2)
    np.testing.assert_array_equal(again.encode(a), tok.encode(a))
    np.testing.assert_array_equal(again.decode(tok.encode(a)), tok.decode(tok.encode(a)))


def test_errors(tok):
    with pytest.raises(RuntimeError, match="not fitted"):
        ActionTokenizer().encode(np.zeros((1, 7)))
    with pytest.raises(ValueError, match="shape"):
        tok.encode(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="non-finite"):
        ActionTokenizer().fit(np.full((4, 7), np.nan))
    with pytest.raises(ValueError, match="lie in"):
        tok.decode(np.full((1, 7), 256))
    with pytest.raises(ValueError, match="even"):
        ActionTokenizer(num_bins=255)
    bad = tok.to_dict()
    bad["edges"]["dx_m"] = bad["edges"]["dx_m"][::-1]
    with pytest.raises(ValueError, match="non-decreasing"):
        ActionTokenizer.from_dict(bad)
