"""The drift checks' arithmetic (imgclf/monitoring/drift/checks.py): PSI and its bins, and the
class-mix check over K classes, against scipy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from scipy.stats import chi2_contingency, entropy

from imgclf.config import MonitorParams
from imgclf.monitoring.drift.checks import bin_counts, check_class_mix, confidence_edges, psi
from imgclf.monitoring.drift.inputs import Predictions

THREE = ["bird", "cat", "dog"]
PARAMS = MonitorParams()


def test_psi() -> None:
    assert psi([50, 50], [500, 500]) == pytest.approx(0, abs=1e-12)
    assert psi([85, 15], [50, 50]) == pytest.approx(0.6, abs=0.02)
    assert 1 < psi([0, 100, 0], [50, 50, 0]) < 10  # empty bins stay finite
    values = np.array([0.5, 0.549, 0.55, 0.999, 1.0])
    counts = bin_counts(values, confidence_edges(10, 2)[1:-1])
    assert counts.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]


@pytest.mark.parametrize(("n_classes", "floor"), [(2, 0.5), (3, 1 / 3), (10, 0.1)])
def test_confidence_bins_span_one_over_k_to_one(n_classes: int, floor: float) -> None:
    """Argmax over K classes never gives less than 1/K: the bins start there."""
    edges = confidence_edges(5, n_classes)
    np.testing.assert_allclose(edges, np.linspace(floor, 1, 6))
    assert bin_counts(np.array([floor, 0.99]), edges[1:-1]).tolist() == [1, 0, 0, 0, 1]


def predictions(counts: Sequence[int]) -> Predictions:
    """Predictions naming THREE's classes `counts` times each (the class mix reads labels)."""
    n = sum(counts)
    return Predictions(
        label=np.array([c for c, k in zip(THREE, counts, strict=True) for _ in range(k)], object),
        confidence=np.ones(n),
        width=np.ones(n),
        height=np.ones(n),
        true_label=np.array([None] * n, object),
    )


def scipy_psi(live: Sequence[int], reference: Sequence[int]) -> float:
    """PSI is the symmetric Kullback-Leibler divergence (of the half-count-smoothed shares)."""
    a, e = np.asarray(live) + 0.5, np.asarray(reference) + 0.5
    return float(entropy(a, e) + entropy(e, a))


def test_a_shifted_three_class_mix_is_flagged() -> None:
    live, reference = [180, 90, 30], [100, 100, 100]
    check = check_class_mix(predictions(live), predictions(reference), THREE, PARAMS)
    assert check.verdict == "drift"
    assert check.statistics["psi"] == pytest.approx(scipy_psi(live, reference))
    assert check.statistics["p_value"] == pytest.approx(chi2_contingency([live, reference]).pvalue)
    assert check.statistics["live_shares"] == pytest.approx({"bird": 0.6, "cat": 0.3, "dog": 0.1})
    assert check.statistics["never_predicted"] == []


def test_an_unshifted_three_class_mix_is_ok() -> None:
    live, reference = [98, 101, 101], [100, 100, 100]
    check = check_class_mix(predictions(live), predictions(reference), THREE, PARAMS)
    assert check.verdict == "ok"
    assert check.statistics["p_value"] == pytest.approx(chi2_contingency([live, reference]).pvalue)


def test_a_class_never_predicted_is_named() -> None:
    """No live `cat`: named, and still one of the K bins of both statistics."""
    live, reference = [150, 0, 150], [100, 100, 100]
    check = check_class_mix(predictions(live), predictions(reference), THREE, PARAMS)
    assert check.statistics["never_predicted"] == ["cat"]
    assert check.verdict == "drift"
    assert check.statistics["psi"] == pytest.approx(scipy_psi(live, reference))
    assert check.statistics["p_value"] == pytest.approx(chi2_contingency([live, reference]).pvalue)
    assert "cat 0.0% (test 33.3%)" in check.value
