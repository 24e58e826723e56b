"""One reading of "this store URL is PostgreSQL" for the config check, the store factory, the
instance lock and the start-up checks (`core.endpoints.is_postgres_url`): written out in six
places before, where one spelling missed by one of them would, say, lock a PostgreSQL store
with a SQLite lock file."""

from __future__ import annotations

import pytest

from tradingd.config import ConfigError, _check_storage_url
from tradingd.core.endpoints import is_postgres_url
from tradingd.storage.factory import open_store


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@h/db", "postgres://h/db", "  POSTGRESQL://h/db ", "PostgreS://h:5432/db"],
)
def test_postgres_spellings_are_postgres_for_the_config_and_the_factory(url: str) -> None:
    assert is_postgres_url(url)
    _check_storage_url(url)  # accepted as PostgreSQL, not "unsupported scheme"
    assert type(open_store(url)).__name__ == "PostgresStore"


@pytest.mark.parametrize(
    "url", ["sqlite:///var/x.db", "postgresql:/h/db", "mysql://h/db", "", "  ", "xpostgres://h"]
)
def test_other_urls_are_not_postgres(url: str) -> None:
    assert not is_postgres_url(url)
    if not url.strip().startswith("sqlite"):
        with pytest.raises(ConfigError):
            _check_storage_url(url)


def test_an_unclosed_ipv6_bracket_names_the_setting_and_the_masked_url() -> None:
    """urllib's "Invalid IPv6 URL" came out as `storage: Invalid IPv6 URL`, naming neither."""
    with pytest.raises(ConfigError) as e:
        _check_storage_url("postgresql://u:pw-secret@[::1:5432/db")
    assert str(e.value) == (
        "storage.url = 'postgresql://u:***@[::1:5432/db' is invalid: Invalid IPv6 URL"
    )
