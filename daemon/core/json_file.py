"""A record's JSON file read as an object, without pandas: the trial ledger's line at a
backtest's end reads the environment.json just written, and a backtest from the panel cache
imports no pandas (`core/lazy.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def json_object_file(file: Path) -> dict[str, Any]:
    """The JSON object in `file`; ValueError naming the file when it cannot be read as one."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} holds {type(data).__name__}, not a JSON object")
    return data
