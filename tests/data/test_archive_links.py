"""An archive may hold only files and folders: symlinks, hard links, devices and FIFOs are refused
outright (tar and zip), before anything is written, whatever tarfile's `data` filter would let
through: a long chain of symlinks defeats it before Python 3.11.13 (CVE-2025-4517)."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from imgclf.data.sources import Extractor
from imgclf.data.sources.errors import UnsafeArchiveError
from tests.data.test_download_stage import download_params, run_stage
from tests.data.test_sources import add_tar_member, assert_one_line, jpeg

# The symlink chain of CVE-2025-4517 (CPython's own test_realpath_limit_attack): 16 long folder
# names, each with a one-letter link to it, whose expansion overflows PATH_MAX, so realpath()
# stops resolving and the filter believes the links that follow stay inside.
STEPS = "abcdefghijklmnop"


def entries_outside(top: Path, extraction: Path) -> dict[str, object]:
    """Every file (its bytes), link (its target) and folder under `top`, the extraction folder
    left out; links are never followed."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != extraction]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(top).as_posix()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("folder",)
            else:
                found[rel] = ("file", path.read_bytes())
    return found


def refused(archive: Path, dest: Path, *words: str) -> None:
    """Extracting `archive` into `dest` is refused in one line naming `words`, nothing lands
    outside `dest`'s parent folder that was not there before, and no file lands in `dest`."""
    before = entries_outside(dest.parent, dest)
    with pytest.raises(UnsafeArchiveError) as error:
        Extractor().extract(archive, dest)
    assert_one_line(error, archive.name, *words)
    assert entries_outside(dest.parent, dest) == before
    assert not [p for p in dest.rglob("*") if not p.is_dir()]


def cve_2025_4517_tar(path: Path, dest: Path) -> Path:
    """CPython's test archive for CVE-2025-4517, sized for `dest`: through links the filter
    cannot resolve, `escape` points at dest's parent, `flaglink` hard-links its `flag` and is then
    overwritten, and `escape/newfile` is created there."""
    path_max = os.pathconf(dest.parent, "PC_PATH_MAX")
    component = "d" * ((path_max - len(str(dest)) - 1) // (len(STEPS) + 1))
    with tarfile.open(path, "w") as tf:
        folder = ""
        for step in STEPS:
            add_tar_member(tf, os.path.join(folder, component), type=tarfile.DIRTYPE, mode=0o777)
            add_tar_member(tf, os.path.join(folder, step), type=tarfile.SYMTYPE, linkname=component)
            folder = os.path.join(folder, component)
        link = os.path.join(*STEPS, "l" * 254)
        add_tar_member(tf, link, type=tarfile.SYMTYPE, linkname=os.path.join(*[".."] * 16))
        add_tar_member(tf, "escape", type=tarfile.SYMTYPE, linkname=os.path.join(link, ".."))
        add_tar_member(tf, "flaglink", type=tarfile.LNKTYPE, linkname="escape/flag")
        add_tar_member(tf, "flaglink", b"overwrite")
        add_tar_member(tf, "escape/newfile", b"new")
    return path


def test_cve_2025_4517_symlink_chain_is_refused_at_its_first_link(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "flag").write_bytes(b"secret")
    dest = outer / "dest"
    archive = cve_2025_4517_tar(tmp_path / "chain.tar", dest)
    refused(archive, dest, "'a'", "symlink")
    assert (outer / "flag").read_bytes() == b"secret"


@pytest.mark.parametrize(
    ("member", "linkname"),
    [
        ("cats/passwd.jpg", "/etc/passwd"),
        ("cats/passwd.jpg", "../../../../../../../../etc/passwd"),
        ("cats/b.jpg", "cats/a.jpg"),  # even inside: no image needs a link
    ],
)
def test_tar_hard_links_are_refused(tmp_path: Path, member: str, linkname: str) -> None:
    passwd = Path("/etc/passwd").read_bytes()
    archive = tmp_path / "hard.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        add_tar_member(tf, "cats/a.jpg", jpeg())
        add_tar_member(tf, member, type=tarfile.LNKTYPE, linkname=linkname)
    refused(archive, tmp_path / "out", repr(member), "hard link")
    assert Path("/etc/passwd").read_bytes() == passwd


def test_overwriting_through_a_hard_link_never_reaches_its_target(tmp_path: Path) -> None:
    """The attack a hard link enables: link to a file outside, then write the link's name."""
    (tmp_path / "victim.txt").write_bytes(b"intact")
    archive = tmp_path / "overwrite.tar"
    with tarfile.open(archive, "w") as tf:
        add_tar_member(tf, "x.jpg", type=tarfile.LNKTYPE, linkname=str(tmp_path / "victim.txt"))
        add_tar_member(tf, "x.jpg", b"overwritten")
    refused(archive, tmp_path / "out", "'x.jpg'", "hard link")
    assert (tmp_path / "victim.txt").read_bytes() == b"intact"


@pytest.mark.parametrize("linkname", ["a.jpg", "../../etc/passwd", "/etc/passwd"])
def test_tar_symlinks_are_refused_wherever_they_point(tmp_path: Path, linkname: str) -> None:
    archive = tmp_path / "sym.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        add_tar_member(tf, "cats/a.jpg", jpeg())
        add_tar_member(tf, "cats/b.jpg", type=tarfile.SYMTYPE, linkname=linkname)
    refused(archive, tmp_path / "out", "'cats/b.jpg'", "symlink")


@pytest.mark.parametrize(
    ("kind", "word"),
    [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")],
)
def test_tar_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes, word: str) -> None:
    archive = tmp_path / "special.tar"
    with tarfile.open(archive, "w") as tf:
        add_tar_member(tf, "cats/a.jpg", jpeg())
        add_tar_member(tf, "cats/null.jpg", type=kind, devmajor=1, devminor=3)
    refused(archive, tmp_path / "out", "'cats/null.jpg'", word)


@pytest.mark.parametrize(
    ("mode", "word"),
    [
        (stat.S_IFLNK | 0o777, "symlink"),  # as `zip -y` writes a link
        (stat.S_IFIFO | 0o644, "FIFO"),
        (stat.S_IFCHR | 0o644, "device"),
    ],
)
@pytest.mark.parametrize("target", ["a.jpg", "../../../etc/passwd"])
def test_zip_link_and_special_entries_are_refused(
    tmp_path: Path, mode: int, word: str, target: str
) -> None:
    archive = tmp_path / "special.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/a.jpg", jpeg())
        info = zipfile.ZipInfo("cats/link.jpg")
        info.create_system = 3  # Unix: the upper 16 bits of external_attr are st_mode
        info.external_attr = mode << 16
        zf.writestr(info, target)
    refused(archive, tmp_path / "out", "'cats/link.jpg'", word)


def test_zip_with_unix_modes_of_files_and_folders_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "unix.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        folder = zipfile.ZipInfo("cats/")
        folder.external_attr = (stat.S_IFDIR | 0o755) << 16
        zf.writestr(folder, b"")
        file = zipfile.ZipInfo("cats/a.jpg")
        file.external_attr = (stat.S_IFREG | 0o600) << 16
        zf.writestr(file, jpeg())
    Extractor().extract(archive, tmp_path / "out")
    assert (tmp_path / "out/cats/a.jpg").read_bytes() == jpeg()


def test_an_existing_link_in_the_destination_is_never_written_through(tmp_path: Path) -> None:
    """The paths are resolved here: a link already in the destination does not bend them."""
    (tmp_path / "elsewhere").mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "cats").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/a.jpg", jpeg())
    with pytest.raises(UnsafeArchiveError) as error:
        Extractor().extract(archive, dest)
    assert_one_line(error, "ok.zip", "link")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_download_stage_refuses_a_link_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tf:
        add_tar_member(tf, "cat/1.jpg", jpeg())
        add_tar_member(tf, "dog/1.jpg", type=tarfile.SYMTYPE, linkname="../cat/1.jpg")
    params = download_params(source=str(archive), workers=1)
    code, out, err = run_stage(monkeypatch, capsys, params, tmp_path / "project")
    assert code == 1 and out == ""
    assert err.startswith("download: unsafe archive pets.tar: ") and err.count("\n") == 1, err
    assert "'dog/1.jpg'" in err and "symlink" in err and "Traceback" not in err
    assert not (tmp_path / "project" / "artifacts").exists()
