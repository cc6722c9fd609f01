"""params.yaml is the source of every knob; the code's defaults must not silently disagree.
(The service's settings, the environment over it: test_settings.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from imgclf.config import Paths, load_params


def _mismatches(section: BaseModel, prefix: str) -> list[str]:
    found = []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            found += _mismatches(value, f"{prefix}{name}.")
        elif not field.is_required() and value != field.get_default(call_default_factory=True):
            found.append(f"{prefix}{name}: params.yaml {value!r}, code {field.get_default()!r}")
    return found


def test_code_defaults_equal_params_yaml() -> None:
    assert _mismatches(load_params(), "") == []


def test_a_bad_value_names_its_field(tmp_path: Path) -> None:
    text = (Paths().root / "params.yaml").read_text().replace("train: 0.70", "train: 0.90")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ValidationError, match="split fractions must sum to 1"):
        load_params(tmp_path / "params.yaml")


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    text = (
        (Paths().root / "params.yaml").read_text().replace("  lr: 1.0e-3", "  lr: 1.0e-3\n  lrr: 1")
    )
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ValidationError, match="lrr"):
        load_params(tmp_path / "params.yaml")
