"""Model folders with one ONNX file swapped for a tiny hand-built graph, for the ML plugin's
load, reload and cache tests:

    from tiny_models import graph, model_folder

    rf = graph(tmp_path / "rf.onnx", (1000,), "constant", 0.001)   # input (batch, 1000)
    d = model_folder(tmp_path / "m", random_forest=rf)             # shipped pair, rf swapped

`model_folder` copies the shipped pair and puts the swapped files' sha256 in the card (as a
half-careful operator would), so the hash check passes and what follows it is tested. The
graphs are built with the `onnx` package (the train extra): tests skip without it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tradingd.inference.onnx import MODELS, sha256_file

# What the graph outputs per input row, from s = the sum of the row's absolute values:
# "constant": value (whatever the input); "nan_off_zero": sqrt(-s), NaN for any row that is
# not all zeros (the warm-up's rows are: the card's mean, scaled); "inf_off_zero":
# exp(1e6 * s) - 1, inf for such rows; "shape_needs": a reshape to (-1, value) first, which
# onnxruntime refuses at run time for inputs whose size it does not divide.
KINDS = ("constant", "nan_off_zero", "inf_off_zero", "shape_needs")


def graph(path: Path, dims: tuple[Any, ...], kind: str = "constant", value: float = 0.0) -> Path:
    """A float32 graph of input (batch, *dims) (an int dim fixed, a str one symbolic) and
    output (batch, 1), written to `path`."""
    onnx = pytest.importorskip("onnx", reason="the train extra (onnx) is not installed")
    from onnx import TensorProto, helper

    def const(name: str, values: list[float], dtype: int = TensorProto.FLOAT) -> Any:
        return helper.make_tensor(name, dtype, [len(values)], values)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *dims])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    inits = [
        const("axes", list(range(1, len(dims) + 1)), TensorProto.INT64),
        const("zero", [0.0]),
        const("value", [value]),
        const("big", [1e6]),
        const("one", [1.0]),
        const("out_shape", [-1, 1], TensorProto.INT64),
    ]
    nodes = [helper.make_node("Abs", ["x"], ["a"])]
    if kind == "shape_needs":
        inits.append(const("in_shape", [-1, int(value)], TensorProto.INT64))
        inits[0] = const("axes", [1], TensorProto.INT64)
        nodes = [
            helper.make_node("Reshape", ["x", "in_shape"], ["r"]),
            helper.make_node("Abs", ["r"], ["a"]),
        ]
    nodes.append(helper.make_node("ReduceSum", ["a", "axes"], ["s"], keepdims=0))
    tail: Mapping[str, list[Any]] = {
        "constant": [
            helper.make_node("Mul", ["s", "zero"], ["z"]),
            helper.make_node("Add", ["z", "value"], ["out"]),
        ],
        "shape_needs": [helper.make_node("Mul", ["s", "zero"], ["out"])],
        "nan_off_zero": [
            helper.make_node("Neg", ["s"], ["n"]),
            helper.make_node("Sqrt", ["n"], ["out"]),
        ],
        "inf_off_zero": [
            helper.make_node("Mul", ["s", "big"], ["b"]),
            helper.make_node("Exp", ["b"], ["e"]),
            helper.make_node("Sub", ["e", "one"], ["out"]),
        ],
    }
    nodes += [*tail[kind], helper.make_node("Reshape", ["out", "out_shape"], ["y"])]
    used = {name for node in nodes for name in node.input}
    inits = [t for t in inits if t.name in used]  # (onnxruntime warns of the others)
    model = helper.make_model(
        helper.make_graph(nodes, kind, [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8  # what onnxruntime >= 1.17 (the declared floor) reads
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def model_folder(
    folder: Path,
    *,
    cnn_lstm: Path | None = None,
    random_forest: Path | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """A copy of the shipped pair at `folder` with the given ONNX files in place of its own,
    their sha256 in the card (the model_version left as it is), then `edit(card)`."""
    from tradingd_plugins.signals.ml_ensemble import default_model_dir

    shutil.copytree(default_model_dir(), folder)
    card = json.loads((folder / "card.json").read_text())
    for m, src in (("cnn_lstm", cnn_lstm), ("random_forest", random_forest)):
        if src is not None:
            shutil.copy(src, folder / card["files"][m]["path"])
    for m in MODELS:
        card["files"][m]["sha256"] = sha256_file(folder / card["files"][m]["path"])
    if edit is not None:
        edit(card)
    (folder / "card.json").write_text(json.dumps(card))
    return folder
