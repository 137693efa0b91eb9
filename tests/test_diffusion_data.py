"""The diffusion data sets, normalised to mean 0 / variance 1 (minigen.diffusion.data)."""

import numpy as np
import pytest
from hypothesis import given

from minigen import toy2d
from minigen.diffusion.data import Normalizer, load_digits, load_toy2d
from tests import strategies as S


@given(x=S.arrays((7, 3), lo=-50, hi=50))
def test_normalizer_round_trip(x):
    x = x + np.arange(7)[:, None] * np.array([1.0, 2.0, 3.0])  # every column varies
    norm = Normalizer.fit(x)
    z = norm.transform(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0), 1, rtol=1e-9)
    np.testing.assert_allclose(norm.inverse(z), x, rtol=1e-9, atol=1e-9)


def test_normalizer_json_round_trip_and_bad_json():
    norm = Normalizer.fit(np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 0.0]]))
    back = Normalizer.from_json(norm.to_json())
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)
    with pytest.raises(ValueError, match="std"):
        Normalizer.from_json('{"mean": [0.0]}')


def test_a_constant_coordinate_cannot_be_normalised():
    x = np.array([[1.0, 3.0], [2.0, 3.0], [5.0, 3.0]])
    with pytest.raises(ValueError, match="coordinate 1 has zero variance"):
        Normalizer.fit(x)
    with pytest.raises(ValueError, match=r"coordinate \(0, 2\)"):
        images = np.random.default_rng(0).standard_normal((4, 3, 3))
        images[:, 0, 2] = 7.0  # one constant pixel
        Normalizer.fit(images)
    with pytest.raises(ValueError, match="empty"):
        Normalizer.fit(np.zeros((0, 2)))


def test_normalizer_keeps_float32():
    x = np.random.default_rng(0).standard_normal((10, 2)).astype(np.float32)
    norm = Normalizer.fit(x)
    assert norm.transform(x).dtype == np.float32 and norm.inverse(x).dtype == np.float32
    assert norm.mean.dtype == np.float64  # the statistics stay exact


@pytest.mark.parametrize("name", sorted(toy2d.DATASETS))
def test_toy2d_is_normalised_per_coordinate_and_maps_back(name):
    x, y, norm = load_toy2d(name, 1000, seed=3)
    assert x.shape == (1000, 2) and x.dtype == np.float32
    assert y.shape == (1000,) and y.dtype == np.int64
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-5)
    raw, raw_y = toy2d.DATASETS[name](1000, seed=3)
    np.testing.assert_allclose(norm.inverse(x), raw, atol=1e-5)
    np.testing.assert_array_equal(y, raw_y)


def test_toy2d_unknown_name():
    with pytest.raises(ValueError, match="'circles'"):
        load_toy2d("circles")


@pytest.fixture(scope="module")
def digits():
    return {scaling: load_digits(scaling) for scaling in ("standard", "range")}


def test_digits_standardised(digits):
    x, y, norm = digits["standard"]
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.dtype == np.int64 and sorted(set(y.tolist())) == list(range(10))
    assert abs(float(x.mean(dtype=np.float64))) < 1e-5
    assert float(x.std(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    pixels = norm.inverse(x)
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-4)  # integer grey levels
    assert pixels.min() == pytest.approx(0, abs=1e-4)
    assert pixels.max() == pytest.approx(16, abs=1e-4)


def test_digits_scaled_to_minus_one_one(digits):
    x, y, norm = digits["range"]
    assert x.min() == -1.0 and x.max() == 1.0 and x.dtype == np.float32
    np.testing.assert_array_equal(digits["standard"].y, y)
    assert set(np.unique(norm.inverse(x)).tolist()) <= set(range(17))


def test_digits_unknown_scaling():
    with pytest.raises(ValueError, match="'unit'"):
        load_digits("unit")
