"""The two-sample tests: quiet on one distribution, loud on two, and the numpy fallbacks agree
with the libraries they stand in for."""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pytest

from lmops.monitor import stats


def _block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real = builtins.__import__

    def fake(name: str, *a: Any, **k: Any) -> Any:
        if name.split(".")[0] in names:
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_scalar_tests_separate_shift_from_noise() -> None:
    rng = np.random.default_rng(0)
    ref, same, moved = rng.normal(0, 1, 800), rng.normal(0, 1, 800), rng.normal(0.8, 1, 800)
    assert not stats.psi(ref, same).drift and stats.psi(ref, moved).drift
    assert stats.psi(ref, moved).statistic > 0.2 > stats.psi(ref, same).statistic
    assert not stats.ks(ref, same).drift
    assert stats.ks(ref, moved).drift and stats.ks(ref, moved).p_value < 1e-6  # type: ignore[operator]


def test_psi_on_discrete_values() -> None:
    """Token counts: a reference of 10s and 11s against a window of 1s has moved."""
    ref = np.array([10] * 300 + [11] * 300, float)
    assert stats.psi(ref, np.ones(300)).statistic > 5
    assert stats.psi(ref, np.array([10] * 150 + [11] * 150, float)).statistic < 0.01


def test_ks_fallback_matches_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0.15, 1, 300)
    with_scipy = stats.ks(a, b)
    _block(monkeypatch, "scipy")
    without = stats.ks(a, b)
    assert without.statistic == pytest.approx(with_scipy.statistic)
    assert without.p_value == pytest.approx(with_scipy.p_value, rel=0.15)


def test_rates_and_categories() -> None:
    assert stats.two_proportions(10, 500, 60, 500).drift
    assert not stats.two_proportions(10, 500, 12, 500).drift
    # significant but below min_delta: not drift
    assert not stats.two_proportions(0, 100_000, 300, 100_000, min_delta=0.02).drift
    en = ["en"] * 400 + ["zh"] * 100
    assert not stats.chi_square(en, ["en"] * 390 + ["zh"] * 110).drift
    assert stats.chi_square(en, ["en"] * 250 + ["zh"] * 250).drift


@pytest.mark.parametrize("sklearn", [True, False])
def test_embedding_tests(monkeypatch: pytest.MonkeyPatch, sklearn: bool) -> None:
    rng = np.random.default_rng(2)
    d = 32
    ref = rng.normal(0, 1, (300, d))
    same = rng.normal(0, 1, (300, d))
    # a fifth of the current rows come from another cluster
    moved = np.vstack([rng.normal(0, 1, (240, d)), rng.normal(0.9, 1, (60, d))])
    if not sklearn:
        _block(monkeypatch, "sklearn")
    quiet, loud = stats.classifier_test(ref, same), stats.classifier_test(ref, moved)
    assert not quiet.drift and loud.drift
    assert loud.statistic > 0.56 > quiet.statistic
    assert not stats.mmd_test(ref, same, permutations=200).drift
    m = stats.mmd_test(ref, moved, permutations=200)
    assert m.drift and m.p_value == pytest.approx(1 / 201)
