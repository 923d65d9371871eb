"""Atomic writes: no partial files, no silent overwrite, normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from charstudio.errors import OutputError
from charstudio.io_utils import atomic_write


def test_atomic_write_gets_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda p: p.write_text("hi"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def boom(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom, overwrite=True)
    assert target.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(OutputError, match="already exists"):
        atomic_write(target, lambda p: p.write_text("new"))
    assert target.read_text() == "old"


@pytest.mark.parametrize("errno_code,words", [(28, "no space left"), (13, "no permission"), (30, "no permission"),
                                              (5, "Input/output error")])
def test_os_errors_name_the_file_asked_for_not_the_temporary_one(tmp_path, errno_code, words):
    import os

    dest = tmp_path / "picture.png"

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno_code, os.strerror(errno_code), str(tmp))

    with pytest.raises(OutputError) as e:
        atomic_write(dest, failing)
    msg = str(e.value)
    assert "\n" not in msg and str(dest) in msg and words in msg and ".tmp" not in msg
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_a_missing_or_file_parent_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    for dest, words in ((tmp_path / "nope" / "a.png", "does not exist"), (tmp_path / "file" / "a.png", "not a folder")):
        with pytest.raises(OutputError, match=words) as e:
            atomic_write(dest, lambda tmp: tmp.write_bytes(b"x"))
        assert str(dest) in str(e.value) and ".tmp" not in str(e.value)
