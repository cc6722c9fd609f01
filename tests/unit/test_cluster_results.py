"""The ray engine's bookkeeping (imgclf.data.cluster): results arrive in batches in any order and
go back into input order, each input exactly once; an input returned twice (a rerun batch
delivered again) or never is an error, never a repeated or missing row in the output."""

from __future__ import annotations

import pyarrow as pa
import pytest
from tqdm import tqdm

from imgclf.data.cluster import connected, in_input_order, read_bytes, run_pipeline


def batch(*indices: int) -> pa.Table:
    return pa.table({"index": list(indices), "value": [f"v{i}" for i in indices]})


def placed(*batches: pa.Table, total: int) -> list[dict]:
    return in_input_order(iter(batches), total, tqdm(disable=True))


def test_batches_in_any_order_come_back_in_input_order() -> None:
    rows = placed(batch(3, 0), batch(2), batch(1), total=4)
    assert [row["value"] for row in rows] == ["v0", "v1", "v2", "v3"]


def test_an_input_returned_twice_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="returned input 1 twice"):
        placed(batch(0, 1), batch(1), total=2)


def test_an_input_never_returned_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no result for 1 inputs"):
        placed(batch(0, 2), total=3)


def test_a_ray_client_address_is_refused_before_connecting() -> None:
    """The read stage runs on the driver's node: through Ray Client that is the head, not the
    machine that holds the files."""
    with (
        pytest.raises(ConnectionError, match="Ray Client is not supported"),
        connected("ray://h:1"),
    ):
        pass


def test_no_files_run_nothing() -> None:
    """An empty input (no image in a folder, an empty manifest) never reaches Ray."""
    assert list(run_pipeline([], read_bytes, read_bytes)) == []
    assert placed(total=0) == []
