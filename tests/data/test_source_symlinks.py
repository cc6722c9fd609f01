"""A local-folder source with a symlink loop, a chain of links too deep to follow, a link out of
the folder, or folders nested without end: one line saying which, never a traceback, and no file
outside the folder is ever read."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.data.listing import MAX_DEPTH, list_files
from imgclf.data.sources import SourceError, local_folder
from tests.data.test_download_stage import download_params, run_stage
from tests.data.test_sources import assert_one_line, jpeg


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A folder with one real photo per class."""
    root = tmp_path / "photos"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        (root / label / "1.jpg").write_bytes(jpeg())
    return root


def test_links_inside_the_folder_are_followed(source: Path) -> None:
    (source / "cat" / "again.jpg").symlink_to(source / "dog" / "1.jpg")
    (source / "cat" / "relative.jpg").symlink_to("1.jpg")
    (source / "dog" / "gone.jpg").symlink_to(
        source / "dog" / "missing.jpg"
    )  # its reader reports it
    files, _ = list_files(source)
    assert files == ["cat/1.jpg", "cat/again.jpg", "cat/relative.jpg", "dog/1.jpg", "dog/gone.jpg"]


@pytest.mark.parametrize("target", ["outside.jpg", "missing-outside.jpg"])
def test_a_link_out_of_the_folder_is_refused(source: Path, target: str) -> None:
    outside = source.parent / target
    if target == "outside.jpg":
        outside.write_bytes(jpeg("blue"))
    (source / "cat" / "private.jpg").symlink_to(outside)
    with pytest.raises(SourceError) as error:
        list_files(source)
    assert_one_line(error, "cat/private.jpg", "outside")


def test_a_symlink_loop_is_one_line(source: Path) -> None:
    (source / "cat" / "a.jpg").symlink_to(source / "cat" / "b.jpg")
    (source / "cat" / "b.jpg").symlink_to(source / "cat" / "a.jpg")
    with pytest.raises(SourceError) as error:
        list_files(source)
    assert_one_line(error, "symlink", "loop")


def test_a_chain_of_links_deeper_than_the_system_follows_is_one_line(source: Path) -> None:
    previous = source / "cat" / "1.jpg"
    for i in range(60):  # Linux follows 40
        link = source / "cat" / f"link{i}.jpg"
        link.symlink_to(previous)
        previous = link
    with pytest.raises(SourceError) as error:
        list_files(source)
    assert_one_line(error, "cat/link", "loop")  # link40 onwards


def test_a_chain_of_folder_links_is_one_line(source: Path) -> None:
    previous = source / "dog"
    for i in range(60):
        link = source / f"kennel{i}"
        link.symlink_to(previous, target_is_directory=True)
        previous = link
    with pytest.raises(SourceError) as error:
        list_files(source)
    assert_one_line(error, "kennel", "loop")


def test_folders_nested_without_end_are_one_line(source: Path) -> None:
    deep = source.joinpath("cat", *["d"] * MAX_DEPTH)
    deep.mkdir(parents=True)
    (deep / "2.jpg").write_bytes(jpeg())
    with pytest.raises(SourceError) as error:
        list_files(source)
    assert_one_line(error, f"more than {MAX_DEPTH} levels deep")


def test_a_source_that_is_itself_a_looping_link_is_one_line(tmp_path: Path) -> None:
    loop = tmp_path / "data"
    loop.symlink_to(loop)
    with pytest.raises(SourceError) as error, local_folder(loop):
        pass
    assert_one_line(error, "data", "looping")


def test_download_stage_reports_a_symlink_loop_in_one_line(
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (source / "dog" / "2.jpg").symlink_to(source / "dog" / "2.jpg")
    params = download_params(source=str(source), workers=1, classes=["cat", "dog"])
    code, out, err = run_stage(monkeypatch, capsys, params, tmp_path / "project")
    assert code == 1 and out == ""
    assert err.startswith("download: ") and err.count("\n") == 1, err
    assert "dog/2.jpg" in err and "loop" in err and "Traceback" not in err
    assert not (tmp_path / "project" / "artifacts").exists()
