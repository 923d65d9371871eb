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
