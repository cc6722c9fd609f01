"""THE folder walk (imgclf/data/listing.py) that the download stage and batch prediction share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgclf.data.listing import list_files


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Files at three depths, macOS metadata, links of each kind and a FIFO."""
    root = tmp_path / "in"
    for rel in ("b.JPG", "a.png", "sub/c.jpeg", "sub/deeper/d.jpg", "notes.txt", "sub/e.TXT"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._a.png").write_bytes(b"fork")
    (root / "._b.JPG").write_bytes(b"fork")
    (root / "linked.jpg").symlink_to(root / "a.png")
    (root / "dangling.jpg").symlink_to(root / "missing.jpg")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "far.jpg").write_bytes(b"x")
    (root / "linked_folder").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    os.mkfifo(root / "pipe.jpg")
    return root


def test_every_file_sorted_with_file_links_and_without_metadata_or_linked_folders(
    folder: Path,
) -> None:
    files, others = list_files(folder)
    assert files == [
        "a.png",
        "b.JPG",
        "dangling.jpg",  # listed: its reader reports it as unreadable
        "linked.jpg",
        "notes.txt",
        "sub/c.jpeg",
        "sub/deeper/d.jpg",
        "sub/e.TXT",
    ]
    assert others == 0


def test_a_suffix_filter_in_any_case_counts_the_other_files(folder: Path) -> None:
    files, others = list_files(folder, (".jpg", ".jpeg", ".png"))
    assert files == [
        "a.png",
        "b.JPG",
        "dangling.jpg",
        "linked.jpg",
        "sub/c.jpeg",
        "sub/deeper/d.jpg",
    ]
    assert others == 2  # notes.txt, sub/e.TXT
