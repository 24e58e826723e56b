"""The tests refuse to run on an installed copy that differs from the checkout: after
`pip install .` an edit reached neither `tradingd` nor the tests, which passed on the code as
it was installed."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import stale_install


def test_an_edit_after_a_plain_install_is_named_and_an_unedited_copy_is_not(tmp_path, monkeypatch):
    import tradingd

    installed = Path(tradingd.__file__).parent
    checkout = tmp_path / "checkout"
    shutil.copytree(installed, checkout / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    assert stale_install(checkout) == []  # the same files: nothing to say
    edited = checkout / "daemon" / "config.py"
    edited.write_text(edited.read_text() + "\n# an edit after the install\n")
    assert stale_install(checkout) == ["daemon/config.py"]
    # A module added to the checkout after the install, and one deleted from it.
    (checkout / "daemon" / "new_module.py").write_text("X = 1\n")
    (checkout / "daemon" / "metrics.py").unlink()
    assert stale_install(checkout) == [
        "daemon/config.py",
        "daemon/metrics.py",
        "daemon/new_module.py",
    ]
