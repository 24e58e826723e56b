"""Model inference with onnxruntime only: the daemon never imports TensorFlow or scikit-learn.

A model directory holds two ONNX files (CNN+BiLSTM, random forest) and `card.json`, the
model card written by `tradingd train`: the feature set the models were trained on (checked
against the engine's at start-up), the window, the input scaling, validation metrics and the
files' hashes (checked on load, so a half-copied or edited model never runs).

Ensemble and confidence (the specification's EnsemblePredictor, made precise):
- prediction p = 0.6 * cnn_lstm + 0.4 * random_forest, a forecast of the next bar's log return;
- confidence = Phi(|p| / s), where s is the standard deviation of the ensemble's residuals on
  its validation window and Phi the standard normal CDF: the probability, under a normal error
  model, that the sign of p is right. It lies in [0.5, 1);
- signal = sign(p) when confidence >= threshold (0.55), else 0 (hold).

A model output that is NaN or inf is an error naming the model file (`OnnxModel.run`), never
a forecast: caught by the warm-up when the model is loaded (and, for a live reload, by the
bar's own windows: `ml_ensemble`), it stops a run met later.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import structlog

from ..core.errors import ConfigError
from ..core.numbers import is_finite_real
from ..features.catalog import FeatureSetId

CARD = "card.json"
CARD_FORMAT = "tradingd-model-card/1"
MODELS = ("cnn_lstm", "random_forest")
# The card's `architecture`: the CNN+LSTM's layout, what `tradingd train` builds now. A card
# without it was trained before: its MaxPooling1D dropped the last conv output, the only one
# that sees the window's newest bar, so that model ignores bar t (it still loads, warned of).
CNN_LSTM_ARCHITECTURE = "cnn_lstm/2"

log = structlog.get_logger(__name__)

# (card path, model version) of the cards whose load warnings were said in this process.
_CARDS_WARNED: set[tuple[str, str]] = set()

# Where `tradingd retrain` publishes by default (relative to the working directory, never
# inside the installed package), and the link the ML plugin loads when its model_dir is empty.
DEFAULT_MODEL_ROOT = "var/models"
PUBLISHED_MODEL_DIR = f"{DEFAULT_MODEL_ROOT}/current"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    path: Path
    data: Mapping[str, Any]

    @classmethod
    def load(cls, directory: str | Path) -> ModelCard:
        p = Path(directory) / CARD
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"no model card at {p}: train a model (tradingd train) or point "
                "the plugin's model_dir at one"
            ) from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"model card {p} is not valid JSON: {e}") from None
        except OSError as e:
            # model_dir a file (NotADirectoryError), card.json a folder, unreadable: said as
            # what to fix, not as the plugin's start failing with the exception's name.
            where = Path(directory)
            what = (
                f"model_dir {where} is not a folder"
                if where.exists() and not where.is_dir()
                else f"model card {p} cannot be read ({e.strerror or e})"
            )
            raise ConfigError(
                f"{what}: point the plugin's model_dir at a model's folder (card.json and its "
                "ONNX files)"
            ) from None
        _check_card(p, data)
        return cls(p, data)

    @property
    def feature_set(self) -> FeatureSetId:
        fs = self.data["feature_set"]
        return FeatureSetId(fs["name"], tuple(fs["features"]), fs["version"])

    @property
    def window(self) -> int:
        return int(self.data["window"])

    @property
    def horizon(self) -> int:
        """The target's bars ahead (`target.horizon_bars`): 1 when the card says none."""
        return int((self.data.get("target") or {}).get("horizon_bars", 1))

    @property
    def version(self) -> str:
        return str(self.data["model_version"])


def _check_card(p: Path, data: Any) -> None:
    """Every key the daemon reads from a card, with its type and range, checked at load: a
    damaged or hand-edited card is named with its file and key. A missing nested key was a
    KeyError ('mean') reported as the plugin's params failing, and ensemble weights that do
    not sum to 1 were blamed on the plugin's params."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"model card {p} is not a JSON object")
    for key in ("feature_set", "window", "scaler", "files", "ensemble", "format"):
        _card_field(p, data, key)
    if data["format"] != CARD_FORMAT:
        if _newer_format(data["format"]):
            raise ConfigError(
                f"model card {p}: 'format' is {reprlib.repr(data['format'])}, newer than "
                f"{CARD_FORMAT!r}, the card format this tradingd reads: this card was written "
                "by a newer tradingd: upgrade tradingd (or re-export the model with this "
                "version)"
            )
        _bad_card(
            p,
            "format",
            f"is not {CARD_FORMAT!r}, the card format this tradingd reads",
            data["format"],
        )
    version = _card_field(p, data, "model_version")
    if not isinstance(version, str) or version in ("", ".", "..") or "/" in version:
        _bad_card(
            p, "model_version", "must be a name (it names the prediction cache file)", version
        )
    for key in ("feature_set.name", "feature_set.version"):
        v = _card_field(p, data, key)
        if not isinstance(v, str):
            _bad_card(p, key, "must be a string", v)
    features = _card_field(p, data, "feature_set.features")
    if (
        not isinstance(features, list)
        or not features
        or not all(isinstance(f, str) for f in features)
    ):
        _bad_card(p, "feature_set.features", "must be a list of feature names", features)
    train = _card_range(p, data, "train_range")
    validation = _card_range(p, data, "validation_range")
    if validation[0] < train[1]:
        raise ConfigError(
            f"model card {p}: 'validation_range' starts {validation[0].isoformat()}, before "
            f"'train_range' ends ({train[1].isoformat()}): `tradingd train` validates on the "
            "windows after its training ones; re-train the model or restore the card's dates"
        )
    arch = data.get("architecture")
    if arch is not None and not (isinstance(arch, str) and arch):
        _bad_card(p, "architecture", "must be a non-empty string (e.g. 'cnn_lstm/2')", arch)
    target = data.get("target", {})
    if not isinstance(target, Mapping):
        _bad_card(p, "target", "must be a JSON object", target)
    horizon = target.get("horizon_bars", 1)
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        _bad_card(p, "target.horizon_bars", "must be a whole number of bars >= 1", horizon)
    window = _card_field(p, data, "window")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        _bad_card(p, "window", "must be a whole number of bars >= 1", window)
    for key in ("scaler.mean", "scaler.scale"):
        v = _card_field(p, data, key)
        if not isinstance(v, list) or not all(is_finite_real(x) for x in v):
            _bad_card(p, key, "must be a list of finite numbers", v)
        if len(v) != len(features):
            raise ConfigError(
                f"model card {p}: {key!r} has {len(v)} values, not one for each of the "
                f"{len(features)} features"
            )
    if not all(x > 0 for x in data["scaler"]["scale"]):
        _bad_card(p, "scaler.scale", "must be > 0 (standard deviations)", data["scaler"]["scale"])
    for m in MODELS:
        path = _card_field(p, data, f"files.{m}.path")
        if not isinstance(path, str) or not path:
            _bad_card(p, f"files.{m}.path", "must name the ONNX file", path)
        sha = _card_field(p, data, f"files.{m}.sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            _bad_card(p, f"files.{m}.sha256", "must be a SHA-256 in hex", sha)
    weights = _card_field(p, data, "ensemble.weights")
    if not isinstance(weights, Mapping) or set(weights) != set(MODELS):
        _bad_card(
            p, "ensemble.weights", f"must give a weight to each of {', '.join(MODELS)}", weights
        )
    if (
        not all(is_finite_real(w) for w in weights.values())
        or abs(sum(weights.values()) - 1.0) > 1e-9
    ):
        _bad_card(p, "ensemble.weights", "must be finite numbers that sum to 1", weights)
    resid = _card_field(p, data, "ensemble.residual_std")
    if not is_finite_real(resid) or not resid > 0:
        _bad_card(p, "ensemble.residual_std", "must be a finite number > 0", resid)
    threshold = _card_field(p, data, "ensemble.threshold")
    if not is_finite_real(threshold) or not 0.5 <= threshold < 1:
        _bad_card(p, "ensemble.threshold", "must be in [0.5, 1)", threshold)


def _card_field(p: Path, data: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key of the card, every level above it a JSON object."""
    value: Any = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        if i and not isinstance(value, Mapping):
            _bad_card(p, ".".join(parts[:i]), "must be a JSON object", value)
        if part not in value:
            raise ConfigError(f"model card {p} lacks {'.'.join(parts[: i + 1])!r}")
        value = value[part]
    return value


def _newer_format(value: Any) -> bool:
    """Whether a card's `format` is this card format at a version above the one this
    tradingd reads (`tradingd-model-card/2` and up): written by a newer tradingd, which the
    operator fixes by upgrading, not by repairing the card."""
    name, _, version = CARD_FORMAT.rpartition("/")
    m = re.fullmatch(re.escape(name) + r"/(\d+)", value) if isinstance(value, str) else None
    return m is not None and int(m[1]) > int(version)


def _card_range(p: Path, data: Mapping[str, Any], key: str) -> tuple[date, date]:
    """A card's date range (`train_range`, `validation_range`): two ISO dates
    (YYYY-MM-DD), the first not after the second, as `tradingd train` writes them. The
    in-sample and look-ahead checks (`app.fitted_span`: `backtest.in_sample`,
    `backtest.model_fitted_after` and their replay twins) read them; a malformed range
    (`["2012"]`, a string, null, dates swapped) made them say nothing at all."""
    value = _card_field(p, data, key)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, str) and _ISO_DATE.fullmatch(v) for v in value)
    ):
        _bad_card(p, key, "must be two ISO dates [first, last] (YYYY-MM-DD)", value)
    try:
        first, last = (date.fromisoformat(v) for v in value)
    except ValueError as exc:
        _bad_card(p, key, f"must be two ISO dates [first, last] ({exc})", value)
    if first > last:
        _bad_card(p, key, "must list its first date before its last", value)
    return first, last


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _bad_card(p: Path, key: str, rule: str, value: Any) -> NoReturn:
    raise ConfigError(f"model card {p}: {key!r} {rule}, got {reprlib.repr(value)}")


class OnnxModel:
    def __init__(self, path: Path, expected_sha256: str, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = path
        try:
            got = sha256_file(path)
        except FileNotFoundError:
            raise ConfigError(
                f"model file {path}, named by its card, is missing: re-copy the model"
            ) from None
        except OSError as exc:  # a folder in its place, no permission to read it
            raise ConfigError(
                f"model file {path}, named by its card, cannot be read "
                f"({type(exc).__name__}: {exc.strerror or exc}): check it and its permissions"
            ) from None
        if got != expected_sha256:
            raise ConfigError(
                f"model file {path} does not match its card (sha256 {got[:12]} "
                f"!= {expected_sha256[:12]}): re-export or re-copy the model"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core
        opts.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: between a bar's batched calls a
        # spinning thread holds a core that the GARCH fit worker or the event loop needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except MemoryError:
            raise  # the machine's, not the model file's
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ConfigError(
                f"model file {path} matches its card but onnxruntime {ort.__version__} cannot "
                f"load it ({type(exc).__name__}: {exc}): re-export the model"
            ) from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=False)
        try:
            out = self.session.run(None, {self.input_name: x})[0]
            out = np.asarray(out, dtype=np.float64).reshape(len(x))
        except MemoryError:
            raise  # the machine's, not the model file's
        except Exception as exc:  # onnxruntime's errors name no file
            raise ConfigError(
                f"model file {self.path}: onnxruntime cannot run it on an input of shape "
                f"{x.shape} ({type(exc).__name__}: {exc}): check that the file belongs "
                "to its card (window and features) or re-export the model"
            ) from None
        if not np.isfinite(out).all():
            self._non_finite(x, out)
        return out

    def _non_finite(self, x: np.ndarray, out: np.ndarray) -> NoReturn:
        """A NaN or inf forecast is a broken model, never a forecast: NaN held every symbol
        without a word, inf bought every symbol at confidence 1.0 every bar, and both went
        into the prediction cache. Refused here, where the file is known: at load (the
        warm-up) and on reload the model is not taken up, in a run the run stops."""
        bad = ~np.isfinite(out)
        kinds = ", ".join(sorted({str(v) for v in out[bad].tolist()}))
        inputs = "finite" if np.isfinite(x).all() else "not all finite"
        raise ConfigError(
            f"model file {self.path} output {kinds} for {int(bad.sum())} of {len(out)} input "
            f"windows (its inputs: {inputs}): a forecast must be a finite number; re-export "
            "or retrain the model"
        )


def fingerprint(directory: str | Path, card_data: Mapping[str, Any]) -> str:
    """A model version that names what the models compute, not how the files were written:
    ONNX exporters name their constants differently on every run, so two exports of the same
    weights differ byte for byte. The outputs of both models on a fixed probe input, together
    with the scaling and the feature-set version, do not.

    The sessions run on one thread: onnxruntime's default is one intra-op thread per core, and
    the forest's and the LSTM's sums round differently split across threads, so the same model
    had another version on a machine with another number of cores. Outputs are hashed unrounded:
    rounding would not make the last bit agree across CPUs (a value near a rounding boundary
    still flips) and could give two different models one version, and with it one cache file."""
    d = Path(directory)
    fs = card_data["feature_set"]
    window, n_feat = int(card_data["window"]), len(fs["features"])
    probe = np.random.default_rng(20240101).normal(size=(256, window, n_feat)).astype(np.float32)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [fs["version"], card_data["scaler"]["mean"], card_data["scaler"]["scale"]]
        ).encode()
    )
    for m in MODELS:
        out = raw_outputs(d / card_data["files"][m]["path"], model_input(m, probe))
        h.update(np.ascontiguousarray(out, dtype=np.float32).tobytes())
    return h.hexdigest()[:12]


def model_input(model: str, windows: np.ndarray) -> np.ndarray:
    """`windows` (n, window, features) as `model` takes them: the forest's flattened."""
    return windows if model == "cnn_lstm" else windows.reshape(len(windows), -1)


def raw_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """One exported model's outputs on `x`, on one onnxruntime thread, unchecked: what the
    version (`fingerprint`) and the export's parity (`models.training.export_parity`) are
    made of, not the served path (`OnnxModel`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


class ModelPair:
    """Both ONNX models of one card, with the card's input scaling applied before inference."""

    def __init__(self, directory: str | Path, threads: int = 0) -> None:
        self.card = ModelCard.load(directory)
        d = self.card.path.parent
        files = self.card.data["files"]
        self.models = {
            m: OnnxModel(d / files[m]["path"], files[m]["sha256"], threads) for m in MODELS
        }
        sc = self.card.data["scaler"]
        self.mean = np.asarray(sc["mean"], dtype=np.float32)
        self.scale = np.asarray(sc["scale"], dtype=np.float32)
        n_feat = len(self.card.feature_set.features)
        # The forest too: its width was unchecked, and start-up ended in onnxruntime's
        # "Got: 400 Expected: 200" at the warm-up, naming no file.
        self._check_input("cnn_lstm", (self.card.window, n_feat), "window x features")
        self._check_input("random_forest", (self.card.window * n_feat,), "window * features")
        # Once per card and process: a backtest loads its plugins twice (the start-up check,
        # then the run), and the warnings read as two models.
        said = (str(self.card.path.resolve()), self.card.version)
        if said not in _CARDS_WARNED:
            _CARDS_WARNED.add(said)
            self._warn_architecture()
            self._warn_horizon()

    def _warn_horizon(self) -> None:
        """A card whose target is more than one bar ahead is served, but said once per load:
        the ensemble trades its forecast every bar as if of the next bar's return, and its
        residual_std and confidence are of the longer horizon's returns. A horizon-5 card
        back-tested without a word."""
        if self.card.horizon != 1:
            log.warning(
                "model.horizon_not_one",
                version=self.card.version,
                card=str(self.card.path),
                horizon_bars=self.card.horizon,
                rule=f"the model forecasts the return {self.card.horizon} bars ahead, but "
                "its signal is acted on every bar and held as a one-bar view; its confidence "
                "is calibrated on its own horizon's returns (live accuracy scores it over "
                "that horizon); train with horizon = 1 for the daemon's one-bar decisions",
            )

    def _warn_architecture(self) -> None:
        """A card without `architecture` (the shipped pair and every training before it was
        recorded) is served as before, but said once per load: its CNN+LSTM's pooling
        dropped the last conv output, so the model's forecast never depended on the
        window's newest bar."""
        arch = self.card.data.get("architecture")
        if arch is None:
            log.warning(
                "model.newest_bar_ignored",
                version=self.card.version,
                card=str(self.card.path),
                rule="the card records no architecture: the model was trained before "
                f"{CNN_LSTM_ARCHITECTURE}, whose CNN+LSTM dropped the last conv output in "
                "its pooling, so its forecasts ignore each window's newest bar; retrain it "
                "(tradingd train, or tradingd retrain) to get a model that uses it",
            )

    def _check_input(self, m: str, expected: tuple[int, ...], what: str) -> None:
        """The model's input shape after the batch against the card's; a dimension the file
        leaves open (a name, or none) matches any size."""
        model = self.models[m]
        got = tuple(model.input_shape[1:])
        if len(got) != len(expected) or any(
            isinstance(g, int) and g != e for g, e in zip(got, expected, strict=True)
        ):
            raise ConfigError(
                f"model file {model.path}: its input is {_dims(got)} per window, the card's "
                f"{what} is {_dims(expected)} (window {self.card.window}, "
                f"{len(self.card.feature_set.features)} features): the card belongs to "
                "another model; re-copy the model's files with their own card"
            )

    def warm_up(self, batch: int) -> None:
        """One call of each model on a batch of this size, output discarded. onnxruntime
        sizes its memory arena and prepares its kernels on the first call of a shape; done
        at load, that cost is not paid by the first live bar (the warm-up bars before it only
        fill windows and call no model)."""
        if batch <= 0:
            return
        n_feat = len(self.card.feature_set.features)
        self.predict(np.broadcast_to(self.mean, (batch, self.card.window, n_feat)))

    def predict(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """windows: (B, window, features), unscaled; one batched call per model."""
        x = ((windows - self.mean) / self.scale).astype(np.float32)
        return {
            "cnn_lstm": self.models["cnn_lstm"].run(x),
            "random_forest": self.models["random_forest"].run(x.reshape(len(x), -1)),
        }


def _dims(shape: tuple[Any, ...]) -> str:
    return " x ".join(str(d) for d in shape) or "a scalar"


class EnsemblePredictor:
    def __init__(
        self, weights: Mapping[str, float] | None = None, residual_std: float = 1.0
    ) -> None:
        self.weights = dict(weights or {"cnn_lstm": 0.6, "random_forest": 0.4})
        if abs(sum(self.weights.values()) - 1.0) > 1e-9:
            raise ValueError(f"ensemble weights must sum to 1, got {self.weights}")
        if not residual_std > 0:
            raise ValueError(f"residual_std must be > 0, got {residual_std}")
        self.residual_std = residual_std

    def combine_predictions(self, predictions: Mapping[str, np.ndarray]) -> np.ndarray:
        """The weighted sum of the models' predictions. `predictions` must give one array for
        each weighted model, no other, all of one shape (ValueError naming the model): a
        missing model was a bare KeyError, an extra one ignored, and a length-1 array
        broadcast over the other model's windows."""
        missing = [m for m in self.weights if m not in predictions]
        extra = [str(m) for m in predictions if m not in self.weights]
        if missing or extra:
            raise ValueError(
                "predictions must give one array per weighted model ("
                + ", ".join(self.weights)
                + ")"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; not weighted: {', '.join(extra)}" if extra else "")
            )
        arrays = {m: np.asarray(predictions[m], dtype=np.float64) for m in self.weights}
        first, shape = next((m, a.shape) for m, a in arrays.items())
        for m, a in arrays.items():
            if a.shape != shape:
                raise ValueError(
                    f"predictions of {m} have shape {a.shape}, those of {first} {shape}: "
                    "each model must predict the same windows"
                )
        return sum(w * arrays[m] for m, w in self.weights.items())  # type: ignore[return-value]

    def confidence(self, ensemble_prediction: np.ndarray) -> np.ndarray:
        z = np.abs(ensemble_prediction) / self.residual_std
        return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))

    def generate_signal(
        self, ensemble_prediction: np.ndarray, threshold: float = 0.55
    ) -> tuple[np.ndarray, np.ndarray]:
        """(signal, confidence). `threshold` is the confidence a trade needs, in [0.5, 1) as
        `ml_ensemble`'s threshold and the model card's (confidence is Phi(|p| / residual_std),
        at least 0.5: a threshold below it was 0.5, and 1 or more never trades). A prediction
        that is not finite is refused (ValueError): inf had confidence 1.0, a certain trade,
        and NaN a silent hold."""
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float | np.number)
            or not 0.5 <= threshold < 1
        ):
            raise ValueError(
                f"threshold must be a confidence in [0.5, 1), got {threshold!r} (confidence "
                "is Phi(|prediction| / residual_std), 0.5 for a zero prediction)"
            )
        bad = ~np.isfinite(np.asarray(ensemble_prediction, dtype=np.float64))
        if bad.any():
            raise ValueError(
                f"ensemble predictions must be finite; got {reprlib.repr(ensemble_prediction)} "
                f"({int(bad.sum())} not finite, first at index {int(np.flatnonzero(bad)[0])})"
            )
        conf = self.confidence(ensemble_prediction)
        signal = np.where(conf >= threshold, np.sign(ensemble_prediction), 0.0)
        return signal, conf


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # scipy comes with arch, a core dependency

    return np.asarray(erf(x), dtype=np.float64)
