"""What a run's numbers depend on besides its code, data and config: the packages' versions,
the CPU features numpy and the BLAS dispatch to, the variables that change that dispatch, and
where each configured plugin came from (its module, distribution and version) with a digest
of its package's code files.

Why a run records it: the same commit, data and config give other fills on another machine.
numpy picks its loops for exp, log and other functions by the CPU's SIMD features (AVX-512
against AVX2), and OpenBLAS its kernels; those differ in the last bits, and a ranking
strategy turns a last-bit difference in one score into another order, then another path
(benchmarks/RESULTS.md: 1,870 against 2,234 fills for the S&P 500 run on one machine, with
numpy's AVX-512 loops on and off). A user comparing two runs needs to see that the machines
differed before suspecting the code.

Reading it costs milliseconds (a plugin's distribution is the one that registered it, when
that one installs its module; only otherwise is every installed distribution's file list read,
a tenth of a second): package metadata is read, not imported (numpy and threadpoolctl are
already imported by a backtest). A plugin's code is hashed from its package's files (the
built-ins' 22 files: about a millisecond), and tradingd's own from its packages' (about 20
ms: `own_code`).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# The distributions whose arithmetic reaches a run's numbers (features, model inference,
# GARCH fits, the engine), by their names on the package index.
PACKAGES = (
    "tradingd",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "TA-Lib",
    "arch",
    "onnxruntime",
    "scikit-learn",
    "statsmodels",
    "tensorflow",
)

# Variables that change which loops or kernels run (none of them holds a secret).
DISPATCH_VARIABLES = (
    "NPY_DISABLE_CPU_FEATURES",
    "NPY_ENABLE_CPU_FEATURES",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MKL_CBWR",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution; None where it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def numpy_simd() -> dict[str, list[str]]:
    """The SIMD extensions numpy's loops were built for (baseline) and found at run time,
    as `numpy.show_runtime()` lists them; empty lists where numpy does not tell."""
    try:
        from numpy._core._multiarray_umath import (
            __cpu_baseline__,
            __cpu_dispatch__,
            __cpu_features__,
        )
    except ImportError:  # a numpy that keeps these elsewhere: recorded as unknown
        return {"baseline": [], "found": []}
    found = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    return {"baseline": list(__cpu_baseline__), "found": found}


def blas() -> list[dict[str, Any]]:
    """The BLAS and OpenMP libraries loaded in this process, with the kernel architecture
    each chose (threadpoolctl, the same reading `numpy.show_runtime()` prints)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: lib.get(k) for k in keep if k in lib} for lib in threadpool_info()]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Written into the built package by the build hook (build_commit.py at the project root):
# the commit an installed copy, which is no git checkout, was built from.
BUILD_RECORD = "_build_source.json"


def source_revision(path: Path | None = None) -> dict[str, Any] | None:
    """The git commit of tradingd's source and whether it has uncommitted changes: from the
    checkout the code runs from (an editable install: its state now), else as the build
    recorded it ("from": "build"); None where neither knows."""
    where = path or Path(__file__).resolve().parent
    return _checkout_revision(where) or _built_revision(where)


def _built_revision(where: Path) -> dict[str, Any] | None:
    """The record the build hook left in the installed package. A record that cannot be
    read is logged and taken as unknown: the run goes on, its environment.json without a
    commit."""
    record = where / BUILD_RECORD
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:  # built before the hook, or an editable install's tree
        return None
    except (OSError, ValueError) as exc:
        log.warning(
            "environment.build_record_unreadable",
            file=str(record),
            error=repr(exc),
            fix="reinstall tradingd (pip install .) from its git checkout",
        )
        return None
    commit = data.get("commit") if isinstance(data, dict) else None
    if not isinstance(commit, str) or not commit:
        return None  # built without a checkout or TRADINGD_BUILD_COMMIT: unknown
    edited = data.get("uncommitted_changes")
    return {
        "commit": commit,
        "uncommitted_changes": edited if isinstance(edited, bool) else None,
        "from": "build",
    }


def _checkout_revision(where: Path) -> dict[str, Any] | None:
    """HEAD of the checkout that tracks `where`, with whether it has uncommitted changes;
    None where `where` is not tracked by one (or git is missing or refuses it)."""
    # Not a repository named by the caller's environment (a run started from a git hook).
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        # --no-optional-locks: `git status` must not take the index lock (or rewrite the
        # index) under a user's commit in the same checkout.
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", str(where), *args],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=5,
            check=False,
            env=env,
        )

    try:
        # Tracked files here, or the folder is not the checkout's source: an installed copy
        # in a virtualenv inside some other project's checkout would name that project's
        # commit.
        listed = git("ls-files", "--error-unmatch", ".")
        if listed.returncode:
            if "dubious ownership" in listed.stderr:
                # A checkout owned by another user (a service account running a shared
                # checkout): git refuses it, and the record went without its commit without
                # a word, though it is the first thing to compare between two runs.
                log.warning(
                    "environment.source_unknown",
                    folder=str(where),
                    reason="git refuses a checkout owned by another user (dubious ownership)",
                    fix=f"git config --global --add safe.directory {where.parent}",
                )
            return None
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {
        "commit": head.stdout.strip(),
        "uncommitted_changes": bool(status.stdout.strip()) if status.returncode == 0 else None,
    }


def plugin_sources(
    config: Any, hashed: dict[str, PackageCode | None] | None = None
) -> list[dict[str, Any]]:
    """Each configured plugin (`config.signals`, `.sizing`, `.risk`, in that order): the
    module its class came from, and the installed distribution providing that module with
    its version ("tradingd" for the built-ins), whether that distribution is an editable
    install (its version then pins no code: a plugin author's checkout), and the code that
    ran: `package`, the package whose files were hashed, and `code`, their digest
    (`package_code`). The run id does not cover a plugin's code (a live run's id must not
    change on an upgrade: its client order ids and resume depend on it): a rerun after an
    upgrade or an edit of the plugin has the same id and replaces the record, and this is
    what tells the two apart. A module no distribution provides (a folder on PYTHONPATH)
    has None for the distribution and version; one whose files cannot be found (a zip) has
    None for `package` and `code`. `hashed`: the packages read, by name (`package_code`),
    for `plugin_code` to name their files without reading them again."""
    from .engine.plugins import registered

    specs = [(f"signals[{i}]", s.name) for i, s in enumerate(config.signals)]
    specs += [("sizing", config.sizing.name)]
    specs += [(f"risk[{i}]", s.name) for i, s in enumerate(config.risk)]
    eps = registered()
    owners: Mapping[str, list[str]] | None = None  # read once, only if needed
    hashed = {} if hashed is None else hashed
    installs: dict[str | None, tuple[str | None, bool | None]] = {}
    out = []
    for key, name in specs:
        targets = eps.get(name, [])
        module = targets[0].module if len(targets) == 1 else None
        dist = None
        code = None
        if module:
            dist = _registered_by_provider(targets[0], module)
            if dist is None:
                if owners is None:
                    owners = metadata.packages_distributions()
                dist = _distribution(module, owners)
            code = package_code(module, hashed)
        if dist not in installs:
            installs[dist] = _installed(dist)
        version, editable = installs[dist]
        out.append(
            {
                "key": key,
                "name": name,
                "module": module,
                "distribution": dist,
                "version": version,
                "editable": editable,
                "package": code.package if code else None,
                "code": code.digest if code else None,
            }
        )
    return out


# The endings of the files Python runs code from: sources, bytecode without a source and
# extension modules (`importlib.machinery.all_suffixes`).
CODE_SUFFIXES = tuple(importlib.machinery.all_suffixes())


@dataclass(frozen=True)
class PackageCode:
    """The code files of a plugin's package: `package`, its dotted name; `files`, each
    file's path in it (posix) and the sha256 of its bytes; `digest`, the first 16 hex
    digits of the sha256 of those pairs, in path order."""

    package: str
    files: dict[str, str]

    @property
    def digest(self) -> str:
        text = "".join(f"{path}\0{sha}\n" for path, sha in sorted(self.files.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def package_code(
    module: str, hashed: dict[str, PackageCode | None] | None = None
) -> PackageCode | None:
    """The code of the package `module` belongs to: the first regular package on its
    dotted path (`trial3_plugins` of `trial3_plugins.signals`; below a namespace package,
    the package under it, not every distribution sharing the namespace), or the module
    file alone where it is in no package. Every code file under it is read (not only the
    module defining the plugin class: it imports its helpers from beside it), not
    `__pycache__`. None where the files cannot be found (a module from a zip, a module
    that cannot be found). A plugin author's edit between two runs of one configuration
    changes this, and nothing else in the record: an editable install keeps its version.
    `hashed`: the packages read so far, by name (several plugins of one package read it
    once). Read again at each call, not cached by the files' times: an edit within the
    filesystem's clock tick, of the same size, would keep the earlier digest."""
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        if spec.origin is None or not spec.has_location:  # a namespace package: below it
            continue
        if hashed is not None and name in hashed:
            return hashed[name]
        origin = Path(spec.origin)
        if spec.submodule_search_locations is None:  # a module in no package
            code = _hashed(name, origin.parent, [origin])
        else:
            code = _hashed(name, origin.parent, list(_code_files(origin.parent)))
        if hashed is not None:
            hashed[name] = code
        return code
    return None


def _code_files(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for f in files:
            if f.endswith(CODE_SUFFIXES):
                yield Path(folder, f)


def _hashed(package: str, root: Path, files: list[Path]) -> PackageCode | None:
    out: dict[str, str] = {}
    try:
        for path in files:
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:  # a file gone or unreadable under it: the code is unknown
        return None
    return PackageCode(package, out)


def plugin_code(
    plugins: Any, hashed: dict[str, PackageCode | None] | None = None
) -> dict[str, dict[str, Any]]:
    """The files of each package `plugin_sources` hashed (the entries it returned), for
    `tradingd compare` to name the files that differ: by package, its digest and each
    file's first 16 hex digits. `hashed`: `plugin_sources`'s packages (read again without)."""
    out: dict[str, dict[str, Any]] = {}
    hashed = {} if hashed is None else hashed
    for entry in plugins if isinstance(plugins, list) else ():
        module, package = entry.get("module"), entry.get("package")
        if not module or not package or package in out:
            continue
        code = package_code(module, hashed)
        if code is not None:
            out[package] = {
                "code": code.digest,
                "files": {p: sha[:16] for p, sha in sorted(code.files.items())},
            }
    return out


#: tradingd's own packages by their import names (daemon/, plugins/, models/).
OWN_PACKAGES = ("tradingd", "tradingd_plugins", "tradingd_models")


def own_code(hashed: dict[str, PackageCode | None] | None = None) -> dict[str, Any]:
    """The code files of tradingd itself (`OWN_PACKAGES`, as imported: an editable
    install's checkout, or the installed copy), as `plugin_code` records a plugin package's:
    by package, its digest and each file's first 16 hex digits (None for a package whose
    files cannot be read). source.commit and uncommitted_changes alone told two runs made
    from different uncommitted edits of tradingd apart in nothing: the run id covers no
    code, and `tradingd compare` said "the same environment" of two records whose fills
    differed by the edit. Hashing its 175 files takes about 20 ms, so it is recorded for
    every run. `hashed`: the packages read so far (the built-in plugins' package is read
    once for both)."""
    out: dict[str, Any] = {}
    for name in OWN_PACKAGES:
        code = package_code(name, hashed)
        out[name] = (
            None
            if code is None
            else {
                "code": code.digest,
                "files": {p: sha[:16] for p, sha in sorted(code.files.items())},
            }
        )
    return out


def _registered_by_provider(ep: Any, module: str) -> str | None:
    """The distribution that registered the plugin, when it also installs the module's
    top-level package (as a package registering its own plugins does): its own top-level
    names, as `packages_distributions` reads them (`top_level.txt`, else its file list).
    Asking every installed distribution instead read each one's file list: 0.13-0.15 s of
    every backtest's output step with TensorFlow and Ray installed. None when it does not
    (an entry point naming another distribution's module), and the full scan decides."""
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None)
    if dist is None or not name:
        return None
    top = module.partition(".")[0]
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return name if top in declared else None
    for f in dist.files or ():
        parts = f.parts
        if parts and (parts[0] == top or (len(parts) == 1 and parts[0] == f"{top}.py")):
            return name
    return None


def _distribution(module: str, owners: Mapping[str, list[str]]) -> str | None:
    """The distribution that installs `module`'s top-level package (the first by name where
    several share it, a namespace package)."""
    names = sorted(set(owners.get(module.partition(".")[0], ())))
    return names[0] if names else None


def _installed(dist: str | None) -> tuple[str | None, bool | None]:
    """The distribution's version, and whether it is an editable install (pip's
    direct_url.json; None where it does not say: installed by another tool)."""
    if dist is None:
        return None, None
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None, None
    editable = None
    try:
        direct = json.loads(d.read_text("direct_url.json") or "null")
    except ValueError:
        direct = None
    if isinstance(direct, dict):
        editable = bool((direct.get("dir_info") or {}).get("editable", False))
    return d.version, editable


def environment(config: Any = None) -> dict[str, Any]:
    """Everything above, for a run's `environment.json` and the benchmarks' results, with
    the configured plugins' sources when `config` is given. A part that cannot be read is
    recorded as its error (logged), never a lost run record."""
    out: dict[str, Any] = {}
    parts: dict[str, Any] = {
        "python": platform.python_version,
        "platform": platform.platform,
        "cpu": cpu_model,
        "logical_cpus": os.cpu_count,
        "packages": package_versions,
        "numpy_simd": numpy_simd,
        "blas": blas,
        "dispatch_variables": lambda: {
            k: os.environ[k] for k in DISPATCH_VARIABLES if k in os.environ
        },
        "source": source_revision,
    }
    hashed: dict[str, PackageCode | None] = {}  # each package read once for every part
    parts["tradingd_code"] = lambda: own_code(hashed)
    if config is not None:
        parts["plugins"] = lambda: plugin_sources(config, hashed)
        parts["plugin_code"] = lambda: plugin_code(out.get("plugins"), hashed)
    for key, read in parts.items():
        try:
            out[key] = read()
        except Exception as exc:  # a record of the machine is never worth a failed run
            log.warning("environment.unreadable", part=key, error=repr(exc))
            out[key] = {"error": repr(exc)}
    return out
