"""The names of the files a walk-forward writes, in a module that imports nothing: the
backtest's output-folder check needs them, and `run_records` (which imports pandas) would
cost a backtest from the panel cache pandas' and pyarrow's import (0.2 s)."""

#: What a walk-forward's results folder is known by: `walkforward.write_outputs` writes it
#: first, and a backtest's record never has it.
WALKFORWARD_FILE = "walkforward.json"
#: Every file `walkforward.write_outputs` may write (garch_params.csv and
#: feature_importance.csv only when they have rows): a rerun into the folder replaces them
#: all, so none of an earlier walk-forward's stays beside the new one's.
WALKFORWARD_FILES = (
    WALKFORWARD_FILE,
    "folds.json",
    "equity.csv",
    "fold_equity.csv",
    "folds.csv",
    "stability.csv",
    "stability_summary.csv",
    "garch_params.csv",
    "feature_importance.csv",
    "decay.csv",
)
