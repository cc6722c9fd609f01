"""The promotion gate (imgclf/registry/gate.py): pure, no MLflow."""

from __future__ import annotations

from imgclf.config import RegisterParams
from imgclf.registry.gate import Candidate, GateDecision, decide


def _gate(value, champion_value=None, *, same_data=True, **params) -> GateDecision:
    params = RegisterParams(**params)
    champion = (
        None
        if champion_value is False
        else Candidate("1", champion_value, "dv1" if same_data else "dv0")
    )
    return decide(Candidate("2", value, "dv1"), champion, params)


def test_gate_rules() -> None:
    assert _gate(0.9, False).rule == "no_champion"
    assert _gate(0.9, 0.8).rule == "better"
    assert _gate(0.8, 0.8).rule == "not_better"  # a tie is no improvement
    assert _gate(0.81, 0.8, min_delta=0.02).rule == "not_better"
    assert _gate(0.83, 0.8, min_delta=0.02).rule == "better"
    assert _gate(0.7, False, min_value=0.75).rule == "below_min_value"  # even with no champion
    assert _gate(None, 0.8).rule == "metric_missing"
    assert _gate(0.9, 0.8, same_data=False).rule == "data_version_differs"
    assert _gate(0.9, None).rule == "champion_metric_missing"
    off = _gate(0.9, False, auto_promote=False)
    assert (off.promote, off.decision, off.rule) == (False, "challenger", "auto_promote_off")
    assert "would promote" in off.reason


def test_gate_lower_is_better() -> None:
    assert _gate(0.05, 0.07, metric="log_loss").rule == "better"
    assert _gate(0.09, 0.07, metric="ece").rule == "not_better"
    assert _gate(0.2, False, metric="log_loss", min_value=0.1).rule == "below_min_value"
    assert _gate(0.05, False, metric="log_loss", min_value=0.1).promote
    assert _gate(0.05, 0.07, metric="accuracy", direction="lower").rule == "better"


def test_another_class_list_is_never_promoted_automatically() -> None:
    params = RegisterParams()
    binary, three = ("cat", "dog"), ("cat", "dog", "bird")
    champion = Candidate("1", 0.80, "dv1", binary)
    decision = decide(Candidate("2", 0.99, "dv1", three), champion, params)
    assert (decision.promote, decision.decision, decision.rule) == (
        False,
        "challenger",
        "classes_differ",
    )
    assert "['cat', 'dog']" in decision.reason and "['cat', 'dog', 'bird']" in decision.reason
    assert "imgclf promote --version 2" in decision.reason
    swapped = decide(Candidate("2", 0.99, "dv1", ("dog", "cat")), champion, params)
    assert swapped.rule == "classes_differ"  # the order is the label index: columns differ
    other_data = decide(Candidate("2", 0.99, "dv2", three), champion, params)
    assert other_data.rule == "classes_differ"  # the more telling reason of the two
    assert decide(Candidate("2", 0.99, "dv1", binary), champion, params).rule == "better"


def test_a_champion_without_a_class_list_is_compared_on_its_metric() -> None:
    """Registered before versions carried `classes`: unknown, so the gate works as before."""
    params = RegisterParams()
    old_champion = Candidate("1", 0.80, "dv1")
    assert decide(Candidate("2", 0.99, "dv1", ("cat", "dog")), old_champion, params).promote
    worse = decide(Candidate("2", 0.70, "dv1", ("cat", "dog")), old_champion, params)
    assert worse.rule == "not_better"
