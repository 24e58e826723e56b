"""docs/ARCHITECTURE.md's module map is the design map a newcomer reads first: it listed
brokers/ as simulated.py only and five CLI commands of thirteen, long after the code had
moved on. These keep it in step with the daemon/ tree and the CLI."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_map() -> str:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    start = text.index("## Module map")
    return text[start : text.index("\n## ", start + 1)]


def test_the_module_map_names_every_daemon_module():
    text = _module_map()
    globs = [g.replace("*", r"\w*") for g in re.findall(r"(\w+\*)\.py", text)]
    missing = []
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        named = re.search(rf"(?<![\w*]){re.escape(path.name)}", text)
        if not named and not any(re.fullmatch(g, path.stem) for g in globs):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == [], f"add to docs/ARCHITECTURE.md's module map: {missing}"


def test_the_module_map_lists_every_cli_command():
    from tradingd.__main__ import _parser

    (sub,) = [a for a in _parser()._actions if a.dest == "command"]
    line = " ".join(_module_map().split())
    line = line[line.index("__main__.py") : line.index("app.py")]
    assert [c for c in sub.choices if not re.search(rf"(?<![\w-]){c}(?![\w-])", line)] == []
