"""`core.atomic_file.write_atomically`: files replaced whole or not at all."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tradingd.core.atomic_file import FileNotWritten, unwritable, write_atomically


def _full_after(part: str):
    """A writer that writes `part`, then meets a full disk."""

    def write(fh):
        fh.write(part)
        fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_files_are_written_whole_with_the_umasks_mode(tmp_path):
    a, b = tmp_path / "a.html", tmp_path / "b.csv"
    a.write_text("old")
    old = os.umask(0o027)
    try:
        write_atomically({a: "new page", b: lambda fh: fh.write("x,y\r\n1,2\r\n")}, newline="")
    finally:
        os.umask(old)
    assert a.read_text() == "new page" and b.read_bytes() == b"x,y\r\n1,2\r\n"
    assert (b.stat().st_mode & 0o777) == 0o640  # the umask's, not mkstemp's private 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.csv"]


@pytest.mark.parametrize("failing", [0, 1])
def test_a_failure_leaves_every_file_as_it_was_and_no_temporary_one(tmp_path, failing):
    """Whichever file the disk cannot take, neither is replaced (a report.html beside
    another report's report.json would be two reports), nothing half written is left, and
    the error names the file by its own name, with its errno."""
    a, b = tmp_path / "report.html", tmp_path / "report.json"
    a.write_text("earlier page")
    contents: list = ["x" * 10_000, '{"new": 1}']
    contents[failing] = _full_after("half of it")
    with pytest.raises(FileNotWritten) as caught:
        write_atomically({a: contents[0], b: contents[1]})
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str([a, b][failing])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert a.read_text() == "earlier page"
    message = unwritable(caught.value, "write it elsewhere with --output FOLDER")
    assert message.startswith(f"cannot write {[a, b][failing]}: No space left on device")
    assert message.endswith(
        "free space there and run it again, or write it elsewhere with --output FOLDER"
    )


def test_an_interruption_leaves_no_temporary_file(tmp_path):
    def interrupted(fh):
        fh.write("part")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically({tmp_path / "f.txt": interrupted})
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_written_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "folder" / "f.txt"
    with pytest.raises(FileNotWritten) as caught:
        write_atomically({missing: "text"})
    assert caught.value.errno == errno.ENOENT and caught.value.filename == str(missing)
    assert isinstance(caught.value, OSError)
    assert Path(caught.value.filename).name == "f.txt"


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    """A `tradingd report` killed (SIGKILL) mid-write left its hidden temporary report.html
    beside the report for good; the next write of the same file removes it. A living
    writer's temporary file and other names' are left alone."""
    import subprocess
    import sys

    from tradingd.core.atomic_file import temp_name

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = gone.stdout.strip()
    dead = tmp_path / temp_name("report.html", dead_pid, "0123abcd")
    living = tmp_path / temp_name("report.html", str(os.getppid()), "89abcdef")
    other = tmp_path / temp_name("notes.html", dead_pid, "0123abcd")
    recent = tmp_path / temp_name("report.html", dead_pid, "fedcba98")
    for f in (dead, living, other, recent):
        f.write_text("cut")
    old = time.time() - 3600  # left an hour ago; `recent` was written just now
    for f in (dead, living, other):
        os.utime(f, (old, old))
    write_atomically({tmp_path / "report.html": "whole"})
    # `recent`'s writer may be alive in another pid namespace (a container on a shared
    # volume), where this process sees its pid as gone: a file so new is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["report.html", living.name, other.name, recent.name]
    )
    assert (tmp_path / "report.html").read_text() == "whole"
