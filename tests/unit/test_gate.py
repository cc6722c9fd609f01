"""The promotion gate and the engine check (imgclf/registry/gate.py): pure, no MLflow."""

from __future__ import annotations

from imgclf.config import RegisterParams
from imgclf.registry.gate import Candidate, GateDecision, decide, engine_problem


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


EXPORT = {"engine": "litert", "images": 200, "tolerance": 1e-5, "max_abs_diff": 2e-7}


def _reduced(engine: float, float32: float, metric: str = "accuracy", **params) -> str | None:
    """engine_problem for an int8 engine whose test `metric` is `engine` and the float Keras
    model's `float32`, as export.json and metrics.json hold them."""
    report = EXPORT | {"precision": "int8", "flipped": 3, "max_abs_diff": 0.02}
    metrics = {
        "test": {metric: engine},
        "reduced_precision": {
            "engine": "litert",
            "precision": "int8",
            "float32_test": {metric: float32},
        },
    }
    return engine_problem(
        report | {"max_metric_drop": 0.001}, metrics, RegisterParams(metric=metric, **params)
    )


def test_a_float32_engine_is_judged_by_its_agreement_with_keras() -> None:
    def problem(report: dict) -> str | None:  # a float32 engine: no float-model metrics to read
        return engine_problem(report, None, RegisterParams())

    assert problem(EXPORT | {"flipped": 0}) is None
    assert problem(EXPORT | {"precision": "float32", "flipped": 0}) is None
    assert "changes 1 of 200 labels" in problem(EXPORT | {"flipped": 1})
    assert "by 3.00e-05" in problem(EXPORT | {"flipped": 0, "max_abs_diff": 3e-5})


def test_a_reduced_precision_engine_is_judged_by_its_test_metric() -> None:
    """Changed labels and |dp| beyond the tolerance are expected at int8: not the gate."""
    assert _reduced(0.9720, 0.9720) is None
    assert _reduced(0.9710, 0.9720) is None  # 0.1 point: the limit, reached not passed
    assert _reduced(0.9800, 0.9720) is None  # better than the float model
    refused = _reduced(0.9700, 0.9720)
    assert refused == (
        "the int8 litert engine's test accuracy 0.9700 is 0.0020 worse than the float32 "
        "model's 0.9720 (> export.max_metric_drop 0.001)"
    )


def test_the_drop_follows_the_metrics_direction() -> None:
    assert _reduced(0.1005, 0.1000, metric="log_loss") is None
    assert "log_loss 0.1020 is 0.0020 worse" in _reduced(0.1020, 0.1000, metric="log_loss")
    assert _reduced(0.1020, 0.1000, metric="log_loss", direction="higher") is None


def test_a_reduced_precision_engine_without_the_float_models_metric_is_refused() -> None:
    report = EXPORT | {"precision": "float16", "flipped": 0, "max_metric_drop": 0.001}
    stale = {
        "test": {"accuracy": 0.97},
        "reduced_precision": {
            "engine": "litert",
            "precision": "int8",
            "float32_test": {"accuracy": 0.97},
        },
    }
    for metrics in (None, {"test": {"accuracy": 0.97}}, stale):
        problem = engine_problem(report, metrics, RegisterParams())
        assert problem == (
            "the float16 litert engine has no test accuracy beside the float32 model's in "
            "reports/metrics.json: run evaluate"
        )
