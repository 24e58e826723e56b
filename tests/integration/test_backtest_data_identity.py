"""A backtest's record names the data it ran on: a data file rewritten in place (its size and
mtime kept) is another run id, so the rerun does not replace the first run's record, and
`tradingd compare` of the two says "the data differ" with both digests."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from tradingd.__main__ import main


def _bars(path: Path, scramble_from: date | None = None) -> None:
    """A long CSV of 4 symbols over 180 weekdays; from `scramble_from` on, each close is
    written with its digits in another order (the same size of file, other prices)."""
    rng = np.random.default_rng(7)
    days, d = [], date(2016, 1, 4)
    while len(days) < 180:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "symbol", "open", "high", "low", "close", "volume"])
        for j in range(4):
            close = 50 * np.exp(np.cumsum(rng.normal(0.0005, 0.015, len(days))))
            for day, c in zip(days, close, strict=True):
                c = round(float(c), 2)
                if scramble_from is not None and day >= scramble_from:
                    c = round(c * (0.9 if (day.toordinal() + j) % 2 else 1.1), 2)
                text = f"{c:09.2f}"
                w.writerow([day.isoformat(), f"S{j}", text, text, text, text, 1000000])


def _config(tmp_path: Path, extra: str = "") -> str:
    cfg = tmp_path / "bt.toml"
    cfg.write_text(f"""
[run]
start = "2016-04-01"
output_dir = "{(tmp_path / "runs").as_posix()}"
{extra}
[data]
source = "csv"
path = "{(tmp_path / "bars.csv").as_posix()}"
[cache]
data_dir = "{(tmp_path / "cache").as_posix()}"
[[signals]]
name = "momentum"
params = {{ lookback = 10 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 2, gross_exposure = 0.5 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.3 }}
[storage]
url = "sqlite:///{(tmp_path / "bt.db").as_posix()}"
[log]
level = "warning"
audit_dir = "{(tmp_path / "audit").as_posix()}"
""")
    return str(cfg)


def _rewrite_in_place(path: Path, scramble_from: date) -> None:
    """The file rewritten with other prices, its size and mtime as before (as `cp -p` or
    an editor that restores the time would leave it)."""
    before = path.stat()
    _bars(path, scramble_from)
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _records(root: Path) -> list[Path]:
    return sorted(f for f in root.iterdir() if f.is_dir())  # (beside the trial ledger)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_a_data_file_rewritten_in_place_is_another_run_and_compare_names_it(tmp_path, capsys):
    data = tmp_path / "bars.csv"
    _bars(data)
    cfg = _config(tmp_path)
    assert main(["backtest", "-c", cfg]) == 0
    (first,) = _records(tmp_path / "runs")
    recorded = _summary(first)["data"]
    # The file's SHA-256 as sha256sum prints it, with what it covers.
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    assert recorded == {"source": "csv", "sha256": sha, "files": 1, "bytes": data.stat().st_size}
    assert f"data: sha256 {sha}" in capsys.readouterr().out

    _rewrite_in_place(data, date(2016, 6, 1))
    assert main(["backtest", "-c", cfg]) == 0
    folders = _records(tmp_path / "runs")
    # Another run id: the first run's record is kept whole, beside the second's.
    assert len(folders) == 2 and first in folders
    (second,) = (f for f in folders if f != first)
    assert _summary(first)["data"]["sha256"] == sha
    other = hashlib.sha256(data.read_bytes()).hexdigest()
    assert _summary(second)["data"]["sha256"] == other != sha
    capsys.readouterr()

    assert main(["compare", str(first), str(second)]) == 1
    text = capsys.readouterr().out
    assert f"the data differ:\n  A sha256 {sha} (csv, 1 file," in text
    assert f"\n  B sha256 {other} (csv, 1 file," in text
    assert main(["compare", str(first), str(second), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["data"]["same"] is False
    assert (found["data"]["a"]["sha256"], found["data"]["b"]["sha256"]) == (sha, other)
    # Not also a metric's difference.
    assert not [d for d in found["metrics"]["differences"] if d["key"].startswith("data")]


def test_a_record_without_a_data_digest_is_not_recorded_not_a_difference(tmp_path, capsys):
    _bars(tmp_path / "bars.csv")
    cfg = _config(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["backtest", "-c", cfg, "--output", str(a)]) == 0
    assert main(["backtest", "-c", cfg, "--output", str(b)]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    assert "\nthe same data: sha256 " in capsys.readouterr().out
    older = _summary(a)
    del older["data"]  # as a build before data digests wrote it
    (a / "summary.json").write_text(json.dumps(older))
    assert main(["compare", str(a), str(b), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["same_path"] is True and found["data"]["same"] is None
    assert found["data"]["not_recorded"] == ["a"] and found["metrics"]["differences"] == []
    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "data: not compared:\n  A not recorded (a record made before data digests" in text


def test_a_fixed_run_id_replacing_a_record_on_other_data_says_so(tmp_path, capsys):
    """A fixed run.run_id names the run whatever its data: its record is replaced as
    before, with a warning naming both digests."""
    data = tmp_path / "bars.csv"
    _bars(data)
    cfg = _config(tmp_path, 'run_id = "pinned"')
    assert main(["backtest", "-c", cfg]) == 0
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    _rewrite_in_place(data, date(2016, 6, 1))
    capsys.readouterr()
    assert main(["backtest", "-c", cfg]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    said = [e for e in lines if e["event"] == "backtest.earlier_record_of_other_data"]
    assert len(said) == 1 and said[0]["earlier_data"] == f"sha256 {sha}"
    assert said[0]["data"] == f"sha256 {hashlib.sha256(data.read_bytes()).hexdigest()}"
    assert [f.name for f in _records(tmp_path / "runs")] == ["pinned"]


def test_a_file_rewritten_once_loaded_is_not_what_the_record_names(tmp_path, monkeypatch, capsys):
    """The file was hashed again at each use: a data refresh landing after the load (before
    the engine took its run id, or its record was written) named bytes other than those
    traded, and the next rerun on them replaced this record without a word. The run holds
    the digest taken around its load; a file rewritten during the load is refused."""
    import tradingd.app
    import tradingd.backtest

    data = tmp_path / "bars.csv"
    _bars(data)
    traded = hashlib.sha256(data.read_bytes()).hexdigest()
    cfg = _config(tmp_path)
    build = tradingd.backtest.build_engine

    def refreshed_then_built(*args, **kwargs):  # type: ignore[no-untyped-def]
        _rewrite_in_place(data, date(2016, 6, 1))  # the refresh lands once the data is read
        return build(*args, **kwargs)

    monkeypatch.setattr(tradingd.backtest, "build_engine", refreshed_then_built)
    assert main(["backtest", "-c", cfg]) == 0
    (first,) = _records(tmp_path / "runs")
    assert _summary(first)["data"]["sha256"] == traded
    # The rerun on the refreshed file is another run: the first record stays.
    monkeypatch.setattr(tradingd.backtest, "build_engine", build)
    assert main(["backtest", "-c", cfg]) == 0
    assert len(_records(tmp_path / "runs")) == 2 and first in _records(tmp_path / "runs")
    capsys.readouterr()

    # Rewritten while it is read: refused, naming why.
    load = tradingd.app.load_data

    def refreshed_while_read(config):  # type: ignore[no-untyped-def]
        panel = load(config)
        _rewrite_in_place(data, date(2016, 5, 2))
        return panel

    monkeypatch.setattr(tradingd.app, "load_data", refreshed_while_read)
    assert main(["backtest", "-c", cfg]) == 2
    assert "the data files changed while they were loaded" in capsys.readouterr().err


def test_a_walk_forward_names_the_bytes_it_ran_on_when_the_file_changes_during_it(
    tmp_path, monkeypatch, capsys
):
    """A walk-forward hashed the file at its start (its folder, its folds' prefix) and again
    at its end (walkforward.json's run_id and data): edited during a long analysis, the
    folder named one version and its results another."""
    import tradingd.analysis.walkforward as walkforward

    data = tmp_path / "bars.csv"
    _bars(data)
    traded = hashlib.sha256(data.read_bytes()).hexdigest()
    wf = tmp_path / "wf.toml"
    wf.write_text(
        '[walkforward]\nlookback_bars = 10\ntrain = 40\ntest = 20\nstep = 20\nretrain = "never"\n'
    )
    assemble = walkforward.WalkForwardAnalyzer.assemble

    def edited_during_the_folds(self, results, panel):  # type: ignore[no-untyped-def]
        _rewrite_in_place(data, date(2016, 6, 1))
        return assemble(self, results, panel)

    monkeypatch.setattr(walkforward.WalkForwardAnalyzer, "assemble", edited_during_the_folds)
    argv = ["walkforward", "-c", _config(tmp_path), "-c", str(wf), "--workers", "0", "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    (folder,) = _records(tmp_path / "runs")
    results = json.loads((folder / "walkforward.json").read_text())
    assert results["data"]["sha256"] == traded
    assert folder.name.startswith(results["run_id"] + "-")
