"""A SQLite store URL is percent-encoded: `sqlite:///tmp/sp%20ace/x.db` is the file `x.db` in
the folder `sp ace`. Read undecoded, the store was made in a folder literally named
`sp%20ace`, and the same file written as the URL and as its plain path took two locks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tradingd.config import load_config
from tradingd.core.errors import ConfigError
from tradingd.instance_lock import AnotherDaemonRunning, acquire_instance_lock
from tradingd.preflight import check_config
from tradingd.storage.factory import open_store, sqlite_path


def _encoded(path: Path) -> str:
    return "sqlite:///" + path.as_posix().replace(" ", "%20")


def test_the_store_is_made_in_the_folder_the_url_names(tmp_path: Path) -> None:
    url = _encoded(tmp_path / "sp ace" / "x.db") + "?cache=shared"

    async def start_and_stop() -> None:
        store = open_store(url, spool=False)
        await store.start()
        await store.stop()

    asyncio.run(start_and_stop())
    assert (tmp_path / "sp ace" / "x.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sp ace"]  # no `sp%20ace`


def test_the_url_and_the_plain_path_of_one_file_take_one_lock(tmp_path: Path) -> None:
    db = tmp_path / "sp ace" / "x.db"
    db.parent.mkdir()

    async def both() -> None:
        first = await acquire_instance_lock(_encoded(db), "acct")
        try:
            with pytest.raises(AnotherDaemonRunning):
                await acquire_instance_lock(f"sqlite:///{db}", "acct")
        finally:
            await first.release()

    asyncio.run(both())


def test_the_start_up_check_reads_the_decoded_path(tmp_path: Path) -> None:
    folder = tmp_path / "sp ace"
    folder.mkdir()
    config = load_config(
        [
            {
                "storage": {"url": _encoded(folder)},
                "run": {"output_dir": str(tmp_path / "runs")},
                "log": {"audit_dir": str(tmp_path / "audit")},
            }
        ],
        env={},
    )
    with pytest.raises(ConfigError, match=r"names the folder .*sp ace, not a database file"):
        check_config(config, "fetch")


@pytest.mark.parametrize(
    ("path", "read"),
    [
        ("a%25b.db", "a%b.db"),  # an escaped %
        ("100%.db", "100%.db"),  # a % that starts no escape stays
        ("caf%C3%A9.db", "café.db"),
        ("%3Amemory%3A", ":memory:"),
    ],
)
def test_escapes_are_decoded_and_a_lone_percent_kept(path: str, read: str) -> None:
    assert sqlite_path(f"sqlite:///{path}?mode=rwc") == read


@pytest.mark.parametrize(
    ("path", "said"), [("a%00b.db", "NUL character"), ("a%FFb.db", "not UTF-8")]
)
def test_an_escape_no_file_name_can_hold_is_refused_naming_the_url(path: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said) as e:
        sqlite_path(f"sqlite:///{path}")
    assert f"sqlite:///{path}" in str(e.value)


def _store_config(tmp_path: Path, url: str):  # type: ignore[no-untyped-def]
    return load_config(
        [
            {
                "storage": {"url": url},
                "run": {"output_dir": str(tmp_path / "runs")},
                "log": {"audit_dir": str(tmp_path / "audit")},
            }
        ],
        env={},
    )


def test_a_store_left_at_the_undecoded_path_is_refused_naming_both(tmp_path: Path) -> None:
    """Made by an earlier version at the path as written, the store was silently replaced by
    an empty database at the decoded path: a live daemon began again without its checkpoint."""
    import sqlite3

    written = tmp_path / "my%20db.db"
    sqlite3.connect(written).close()
    config = _store_config(tmp_path, f"sqlite:///{written.as_posix()}")
    with pytest.raises(ConfigError) as e:
        check_config(config, "fetch")
    said = str(e.value)
    assert str(written) in said and str(tmp_path / "my db.db") in said
    assert "Rename" in said and "%25" in said
    assert not (tmp_path / "my db.db").exists()  # nothing made at the decoded path


def test_a_store_at_the_decoded_path_or_escaped_as_written_starts(tmp_path: Path) -> None:
    import sqlite3

    written = tmp_path / "my%20db.db"
    sqlite3.connect(written).close()
    # The fix the refusal names: each % written as %25 reads the file as it is.
    check_config(_store_config(tmp_path, f"sqlite:///{tmp_path.as_posix()}/my%2520db.db"), "fetch")
    # Once renamed (or when both exist), the decoded path is the store.
    sqlite3.connect(tmp_path / "my db.db").close()
    check_config(_store_config(tmp_path, f"sqlite:///{written.as_posix()}"), "fetch")


def test_a_name_whose_escapes_are_too_long_as_written_starts(tmp_path: Path) -> None:
    """Percent-encoding triples a non-ASCII name: the path as written can exceed the file
    system's name limit while the decoded one fits, and looking for a store left there
    stopped the start with a traceback (ENAMETOOLONG)."""
    from urllib.parse import quote

    name = "データ" * 13 + ".db"  # 120 bytes decoded, 360 characters escaped
    assert len(name.encode()) < 255 < len(quote(name))
    url = f"sqlite:///{tmp_path.as_posix()}/{quote(name)}"
    check_config(_store_config(tmp_path, url), "fetch")
