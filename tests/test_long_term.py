"""Long-term statistics (issue 18): the Hellinger distance between power spectra, on signals whose
spectra are known."""

import math

import numpy as np
import pytest

from ckd.metrics import power_spectrum, spectral_hellinger

N = 2048
t = np.arange(N)


def tone(f, amp=1.0):
    """A sinusoid with exactly f periods in N samples: all its power in bin f."""
    return amp * np.sin(2 * np.pi * f * t / N)


def test_power_spectrum_of_a_pure_tone_is_the_smoothing_kernel():
    p = power_spectrum(tone(300)[:, None], smoothing=2.0)[:, 0]
    k = np.arange(-8, 9)  # radius int(4 * 2 + 0.5) = 8
    w = np.exp(-k * k / 8.0)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(p[292:309], w / w.sum(), rtol=1e-9, atol=1e-15)
    assert p[:280].max() < 1e-25 and p[320:].max() < 1e-25
    raw = power_spectrum(tone(300)[:, None], smoothing=0)[:, 0]
    assert raw[300] == pytest.approx(1.0, abs=1e-12)


def test_smoothing_is_scipys_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).normal(size=(500, 2)).cumsum(0)
    raw = np.abs(np.fft.rfft(x - x.mean(0), axis=0)) ** 2
    for s in (0.7, 2.0, 5.0):
        ref = ndimage.gaussian_filter1d(raw, s, axis=0)
        assert np.allclose(power_spectrum(x, s), ref / ref.sum(0), rtol=1e-10, atol=1e-18)


def test_identical_spectra_give_zero_and_disjoint_ones_one():
    x = np.c_[tone(100) + 0.3 * tone(450), tone(40)]
    assert spectral_hellinger(x, x) == 0.0
    shifted = np.r_[x[37:], x[:37]]  # a circular shift keeps |rfft|: same spectra
    assert spectral_hellinger(x, shifted) < 1e-7
    assert spectral_hellinger(x, 5.0 * x + 2.0) < 1e-7  # units and offsets do not matter
    far = np.c_[tone(700), tone(900)]  # 8 sd of smoothing away from every line of x
    assert spectral_hellinger(x, far) == pytest.approx(1.0, abs=1e-12)


def test_known_overlap():
    """p = kernel at f1, q = half at f1 + half at f2 (disjoint lines): sum sqrt(p q) = sqrt(1/2)."""
    a, b = tone(200)[:, None], (tone(200) + tone(600))[:, None]
    assert spectral_hellinger(a, b) == pytest.approx(math.sqrt(1 - math.sqrt(0.5)), rel=1e-9)
    # amplitudes 1 and 2: q = (1/5, 4/5) -> sum sqrt(p q) = sqrt(1/5)
    c = (tone(200) + tone(600, 2.0))[:, None]
    assert spectral_hellinger(a, c) == pytest.approx(math.sqrt(1 - math.sqrt(0.2)), rel=1e-9)
    # averaged over coordinates: (H(a, b) + 0) / 2
    assert spectral_hellinger(np.c_[a, a], np.c_[b, a]) == pytest.approx(math.sqrt(1 - math.sqrt(0.5)) / 2,
                                                                          rel=1e-9)


def test_degenerate_rollouts():
    x = np.c_[tone(100), tone(40)]
    flat = np.c_[np.full(N, 3.0), tone(40)]
    assert spectral_hellinger(x, flat) == pytest.approx(0.5, abs=1e-12)  # coordinate 0: 1, coordinate 1: 0
    assert spectral_hellinger(flat, flat) == 0.0
    bad = x.copy()
    bad[5, 1] = np.nan
    assert spectral_hellinger(x, bad) == 1.0
    huge = x.copy()
    huge[7:, 0] = 1e308 * np.sign(np.sin(t[7:]))  # finite, but its power overflows
    assert spectral_hellinger(x, huge) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="both be"):
        spectral_hellinger(x, x[:100])
