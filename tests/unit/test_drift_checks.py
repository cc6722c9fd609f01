"""The drift checks' arithmetic (imgclf/monitoring/drift/checks.py): PSI and its bins."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.monitoring.drift.checks import bin_counts, confidence_edges, psi


def test_psi() -> None:
    assert psi([50, 50], [500, 500]) == pytest.approx(0, abs=1e-12)
    assert psi([85, 15], [50, 50]) == pytest.approx(0.6, abs=0.02)
    assert 1 < psi([0, 100, 0], [50, 50, 0]) < 10  # empty bins stay finite
    values = np.array([0.5, 0.549, 0.55, 0.999, 1.0])
    counts = bin_counts(values, confidence_edges(10))
    assert counts.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
