"""core/lazy.LazyModule and the panel cache's library versions without importing them."""

from __future__ import annotations

import copy
import pickle

import pytest

from tradingd.core.lazy import LazyModule
from tradingd.feeds import panel_cache


def test_a_lazy_module_is_the_module_at_first_use_and_survives_copy_and_pickle() -> None:
    lazy = LazyModule("json")
    assert lazy.dumps([1]) == "[1]"
    for other in (copy.copy(lazy), copy.deepcopy(lazy), pickle.loads(pickle.dumps(lazy))):
        assert other.loads("[2]") == [2]
    with pytest.raises(AttributeError):
        lazy.__wrapped__  # noqa: B018  (a protocol lookup is not the module's)


def test_versions_come_from_the_imported_module_else_metadata_else_an_import(
    monkeypatch, tmp_path
) -> None:
    import json

    monkeypatch.setattr(json, "__version__", "9.9-imported", raising=False)
    assert panel_cache._version("json") == "9.9-imported"  # loaded: its own version
    # No metadata (a source tree on the path): imported to ask.
    (tmp_path / "tradingd_src_only.py").write_text('__version__ = "3.2.1-src"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert panel_cache._version("tradingd_src_only") == "3.2.1-src"
    with pytest.raises(ModuleNotFoundError):
        panel_cache._version("tradingd_nowhere_at_all")
