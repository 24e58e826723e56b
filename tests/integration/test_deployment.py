"""What can be checked of the deployment without Docker or a running systemd: the unit file
passes `systemd-analyze verify` with the installed entry point, docker-compose.yml parses and
maps the specification's variables onto the daemon's settings, the Dockerfile's runtime stage
is non-root with a HEALTHCHECK on /health, and the runtime requirements never reach the
training libraries."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "tradingd.service"


def _unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_unit_is_a_notify_service_with_watchdog_restart_limits_and_hardening():
    u = _unit_settings()
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    assert int(u["WatchdogSec"][0]) > 0
    assert u["Restart"] == ["on-failure"]
    assert int(u["StartLimitBurst"][0]) > 0 and int(u["StartLimitIntervalSec"][0]) > 0
    assert u["User"] == ["tradingd"] and u["NoNewPrivileges"] == ["true"]
    assert u["ProtectSystem"] == ["strict"] and u["EnvironmentFile"] == ["/etc/tradingd/env"]
    assert u["KillSignal"] == ["SIGTERM"]


def test_the_units_account_lock_folder_is_writable_under_its_hardening():
    """The machine-wide account lock defaults to ~/.cache/tradingd/locks, which
    ProtectSystem=strict leaves read-only for the service: the daemon ran with only its
    store's lock, so a second daemon on the same Alpaca keys was not stopped."""
    u = _unit_settings()
    env = dict(v.split("=", 1) for value in u.get("Environment", []) for v in value.split())
    lock_dir = env.get("TRADINGD_LOCK_DIR")
    assert lock_dir, "the unit sets TRADINGD_LOCK_DIR"
    writable = [w for value in u["ReadWritePaths"] for w in value.split()]
    assert any(Path(lock_dir).is_relative_to(w) for w in writable), (lock_dir, writable)


@pytest.mark.parametrize("unit", ["tradingd.service", "tradingd-retrain.service"])
def test_the_units_caches_are_writable_under_their_hardening(unit):
    """The data and feature caches default to ~/.cache/tradingd, which ProtectSystem=strict
    leaves read-only for the service (its home is /opt/tradingd): every start recomputed
    what the caches keep, and the caches' warnings were the only sign."""
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / unit).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    env = dict(v.split("=", 1) for value in settings.get("Environment", []) for v in value.split())
    writable = [w for value in settings["ReadWritePaths"] for w in value.split()]
    # MPLCONFIGDIR: matplotlib (loaded by arch, a plugin) printed "mkdir -p failed for path
    # /opt/tradingd/.config/matplotlib" in plain text into the JSON journal.
    for var in ("XDG_CACHE_HOME", "MPLCONFIGDIR"):
        folder = env.get(var)
        assert folder, f"{unit} sets {var}"
        assert any(Path(folder).is_relative_to(w) for w in writable), (var, folder, writable)
    if unit == "tradingd-retrain.service":
        assert env.get("TF_CPP_MIN_LOG_LEVEL") == "2"


def test_the_image_and_compose_give_matplotlib_a_writable_config_folder():
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.index("AS runtime") :]
    assert "MPLCONFIGDIR=/opt/tradingd/var/cache/matplotlib" in runtime
    env = _compose()["services"]["tradingd"]["environment"]
    assert env["MPLCONFIGDIR"] == "/opt/tradingd/var/cache/matplotlib"


def test_the_admin_commands_run_with_the_units_environment():
    """Sandbox trial: `sudo -u tradingd tradingd config ...` printed paper.toml's SQLite
    store and local Redis, not the unit's DATABASE_URL and REDIS_URL (its env file is
    root's). systemd/README.md's tradingd-admin runs as the unit does: its user, folder,
    umask, env file and Environment= lines."""
    u = _unit_settings()
    note = " ".join((ROOT / "systemd" / "README.md").read_text().split())
    admin = note[note.index("tradingd-admin() {") : note.index("}", note.index("tradingd-admin"))]
    assert f"--uid={u['User'][0]} --gid={u['Group'][0]}" in admin
    assert f"-p WorkingDirectory={u['WorkingDirectory'][0]}" in admin
    assert f"-p UMask={u['UMask'][0]}" in admin
    assert f"-p EnvironmentFile={u['EnvironmentFile'][0]}" in admin
    unit_env = sorted(v for value in u["Environment"] for v in value.split())
    assert sorted(re.findall(r"-E (\S+)", admin)) == unit_env
    exe = u["ExecStart"][0].split()[0]
    assert f'{exe} "$@"' in admin


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_the_units_syscall_filter_allows_what_the_daemon_calls():
    """`~@privileged @resources` denied mbind, which numpy's OpenBLAS calls as it loads, and
    setpriority (the GARCH worker's os.nice): systemd killed every start with SIGSYS before
    a log line, and the unit ended failed after five tries. A denied call fails with EPERM."""
    u = _unit_settings()
    denied: set[str] = set()
    for value in u["SystemCallFilter"]:
        if not value.startswith("~"):
            continue
        for item in value[1:].split():
            if not item.startswith("@"):
                denied.add(item)
                continue
            r = subprocess.run(
                ["systemd-analyze", "syscall-filter", item],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, r.stderr
            denied |= {ln.strip() for ln in r.stdout.splitlines()[1:] if ln.strip()[:1].isalpha()}
    assert denied, "the unit denies something (@privileged)"
    assert not denied & {"mbind", "setpriority", "sched_setaffinity", "set_mempolicy"}
    assert u["SystemCallErrorNumber"] == ["EPERM"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    exe = shutil.which("tradingd")
    if exe is None:
        pytest.skip("the tradingd entry point is not on PATH")
    # The unit names the install location of the install note; verify it with this one.
    text = UNIT.read_text().replace("/opt/tradingd/venv/bin/tradingd", exe)
    unit = tmp_path / "tradingd.service"
    unit.write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if "tradingd.service" in line and "EnvironmentFile" not in line
    ]
    assert r.returncode == 0 or not problems, r.stdout + r.stderr
    assert not problems, problems


def test_compose_runs_timescaledb_redis_and_the_daemon_with_the_spec_variables():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "timescale/timescaledb" in services["timescaledb"]["image"]
    assert services["redis"]["image"].startswith("redis")
    daemon = services["tradingd"]
    env = daemon["environment"]
    spec = "DB_HOST DB_PORT DB_NAME DB_USER DB_PASSWORD REDIS_HOST REDIS_PORT ALPHA_VANTAGE_API_KEY"
    for var in [*spec.split(), "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"]:
        assert var in env, var
    assert env["DB_HOST"] == "timescaledb" and env["REDIS_HOST"] == "redis"
    # paper.toml trades the Alpaca account (broker.kind = "alpaca"): compose asks for the
    # keys, not a container exiting 78 at every restart.
    for var in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        assert env[var] == f"${{{var}:?set {var} in .env}}", var
    assert all(p.startswith("127.0.0.1:") for p in daemon["ports"])  # loopback on the host
    assert daemon["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    # Months of output: every service's log is capped (Docker's default keeps it all).
    for name, service in services.items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 1, name


def _compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_redis_requires_the_password_the_daemon_is_given():
    """Security trial F2: Redis ran without a password, and tradingd reads its vendors'
    answers back from it: anyone reaching it could feed a live run fake prices."""
    services = _compose()["services"]
    redis, daemon = services["redis"], services["tradingd"]
    required = "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
    assert redis["environment"]["REDIS_PASSWORD"] == required
    assert daemon["environment"]["REDIS_PASSWORD"] == required  # -> cache.url's password
    script = redis["command"][-1]
    assert "requirepass $$REDIS_PASSWORD" in script  # compose's $$: the shell's $
    # On stdin, not an argument `ps` would show to every user of the host.
    assert "--requirepass" not in script and script.lstrip().startswith("exec redis-server -")
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not here")
def test_compose_redis_command_refuses_commands_without_the_password(tmp_path):
    """The compose service's own command, run here: a client without the password gets
    NOAUTH; the healthcheck's REDISCLI_AUTH gets PONG."""
    import os
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = _compose()["services"]["redis"]["command"][-1].replace("$$", "$")
    script = script.replace(
        "redis-server -", f"redis-server - --port {port} --bind 127.0.0.1 --dir {tmp_path}", 1
    )
    env = {**os.environ, "REDIS_PASSWORD": "0a1b2c3d4e5f6789"}
    server = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL)
    try:
        cli = ["redis-cli", "-p", str(port), "ping"]
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run(cli, capture_output=True, text=True, timeout=10)
            if r.stdout.strip() or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "NOAUTH" in r.stdout, r.stdout + r.stderr
        authed = {**os.environ, "REDISCLI_AUTH": env["REDIS_PASSWORD"]}
        r = subprocess.run(cli, capture_output=True, text=True, timeout=10, env=authed)
        assert r.stdout.strip() == "PONG"
        # exec: the server is the shell's process, and its arguments hold no password.
        args = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert b"redis-server" in args and env["REDIS_PASSWORD"].encode() not in args
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_compose_containers_drop_privileges_and_the_database_image_is_pinned():
    """Security trial F8: no capability dropped, no no-new-privileges, writable image file
    systems, and `timescaledb:latest-pg16`, which a pull could move to another release."""
    services = _compose()["services"]
    for name in ("tradingd", "redis"):
        service = services[name]
        assert service["cap_drop"] == ["ALL"], name
        assert service["read_only"] is True, name
    for name, service in services.items():
        assert "no-new-privileges:true" in service["security_opt"], name
    daemon = services["tradingd"]
    assert "/tmp" in daemon["tmpfs"]
    env = daemon["environment"]
    for var in ("XDG_CACHE_HOME", "TRADINGD_LOCK_DIR"):  # writable under read_only
        assert env[var].startswith("/opt/tradingd/var/"), var
    image = services["timescaledb"]["image"]
    assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg16", image), image


def test_the_spec_variables_become_the_daemons_storage_and_cache_urls():
    from tradingd.config import load_config
    from tradingd.secrets import mask_url

    env = {
        "DB_HOST": "timescaledb",
        "DB_PORT": "5432",
        "DB_NAME": "tradingd",
        "DB_USER": "trader",
        "DB_PASSWORD": "p@ss:w/rd",
        "REDIS_HOST": "redis",
        "REDIS_PORT": "6379",
    }
    cfg = load_config([ROOT / "config/default.toml", ROOT / "config/docker.toml"], env=env)
    assert cfg.storage.url == "postgresql://trader:p%40ss%3Aw%2Frd@timescaledb:5432/tradingd"
    assert cfg.cache.url == "redis://redis:6379/0"
    assert "p%40ss" not in mask_url(cfg.storage.url)
    assert "p%40ss" not in cfg.to_public_json() and "p@ss" not in cfg.to_public_json()
    # DATABASE_URL, when given, wins.
    both = load_config(
        [ROOT / "config/default.toml"], env={**env, "DATABASE_URL": "sqlite:///x.db"}
    )
    assert both.storage.url == "sqlite:///x.db"
    # REDIS_PASSWORD (Redis' requirepass, no user) was ignored: the daemon then failed to
    # authenticate, blaming REDIS_URL, which the operator never set.
    secured = load_config([ROOT / "config/default.toml"], env={**env, "REDIS_PASSWORD": "r3d:s/#x"})
    assert secured.cache.url == "redis://:r3d%3As%2F%23x@redis:6379/0"
    assert "r3d" not in secured.to_public_json() and "r3d" not in mask_url(secured.cache.url)


def test_dockerfile_runtime_stage_is_non_root_without_training_libraries():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.M | re.I)
    assert stages == ["build", "runtime"]
    runtime = text[text.index("AS runtime") :]
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*?/health", runtime, flags=re.M)
    assert "[train]" not in runtime and ".[dev" not in runtime


def _requirement_names(dist: str, extras: frozenset[str] = frozenset()) -> set[str]:
    names = set()
    for req in metadata.requires(dist) or []:
        name = re.split(r"[\s;\[<>=!~(]", req, maxsplit=1)[0].lower().replace("_", "-")
        marker = req.split(";", 1)[1] if ";" in req else ""
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra and extra.group(1) not in extras:
            continue
        names.add(name)
    return names


def test_runtime_requirements_never_reach_tensorflow_or_scikit_learn():
    """Walk the installed dependency graph from tradingd without extras (what the runtime
    image installs): no training library may be in it."""
    seen: set[str] = set()
    todo = ["tradingd"]
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            todo.extend(_requirement_names(dist) - seen)
        except metadata.PackageNotFoundError:
            continue  # not installed here: a platform-conditional dependency
    forbidden = {"tensorflow", "tensorflow-cpu", "keras", "scikit-learn", "torch"}
    assert not (seen & forbidden), sorted(seen & forbidden)
    assert {"onnxruntime", "aiohttp", "alpaca-py"} <= seen  # the walk did reach the deps
    assert {"tensorflow-cpu", "scikit-learn"} <= _requirement_names(
        "tradingd", frozenset({"train"})
    )


def _install_note_lines() -> list[str]:
    text = (ROOT / "systemd" / "README.md").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.startswith("    ")]


def test_the_install_note_makes_each_folder_before_writing_into_it():
    """`install -m 0600 /dev/null /etc/tradingd/env` failed: nothing had made /etc/tradingd,
    and the unit's EnvironmentFile (no "-") then kept the daemon from starting."""
    made: set[str] = set()
    for line in _install_note_lines():
        for folder in re.findall(r"(?:install -d(?: -m \d+)?|mkdir -p) (/\S+)", line):
            made.add(folder)
        for target in re.findall(r"(/etc/tradingd/\S+)", line):
            if target.rstrip("/") == "/etc/tradingd":
                continue
            assert any(target.startswith(f"{m}/") for m in made), (line, made)


def test_every_units_documentation_is_a_file_the_install_note_puts_there():
    """`Documentation=file:///opt/tradingd/README.md` named a file the install never copied
    (only config/ was): `systemctl help tradingd` and the status page pointed at nothing."""
    copied: set[str] = set()
    for line in _install_note_lines():
        m = re.search(r"(?:^|&& )(?:sudo )?cp (?:-r )?(.+?) (/opt/tradingd)/?$", line)
        if m:
            copied |= {f"{m.group(2)}/{src.rstrip('/')}" for src in m.group(1).split()}
    for unit in sorted((ROOT / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if not line.startswith("Documentation="):
                continue
            for uri in line.split("=", 1)[1].split():
                assert uri.startswith(("file://", "https://", "man:")), (unit.name, uri)
                if not uri.startswith("file://"):
                    continue
                path = uri[len("file://") :]
                assert any(path == c or path.startswith(f"{c}/") for c in copied), (path, copied)
                local = path.removeprefix("/opt/tradingd/")
                assert (ROOT / local).exists(), local  # the checkout has what is copied


def test_the_retrain_unit_runs_in_a_venv_with_the_train_extra_on_a_named_history():
    """The unit ran the daemon's inference-only venv ("training needs the train extra",
    exit 2 every week), and on paper.toml, whose symbols the bundled data has not."""
    unit = (ROOT / "systemd" / "tradingd-retrain.service").read_text()
    (exec_line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    exe = exec_line.split("=", 1)[1].split()[0]
    venv = exe.rsplit("/bin/", 1)[0]
    lines = _install_note_lines()
    assert any(f"venv {venv}" in ln for ln in lines), venv
    assert any(f"{venv}/bin/pip install" in ln and "[train]" in ln for ln in lines)
    configs = re.findall(r"-c (\S+)", exec_line)
    for c in configs:
        if c.startswith("/"):
            assert any(c in ln for ln in lines), f"{c} is not made by the install note"
        else:
            assert (ROOT / c).is_file(), c
    assert "PrivateTmp=true" in unit


# The daemon unit's hardening, which every unit of tradingd shares.
HARDENING = (
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "RestrictAddressFamilies",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "UMask",
)


def test_the_retrain_unit_is_hardened_as_the_daemons_and_holds_none_of_its_secrets():
    """Security trial F5: the retrain unit had none of the daemon unit's hardening (no
    UMask, NoNewPrivileges, ProtectHome, PrivateDevices, capability bound, syscall filter)
    and loaded /etc/tradingd/env, the Alpaca keys and the health token, which retraining
    on a history file needs none of."""
    daemon = _unit_settings()
    retrain = _unit_settings(ROOT / "systemd" / "tradingd-retrain.service")
    for key in HARDENING:
        assert key in daemon, key
        assert retrain.get(key) == daemon[key], key
    assert daemon["UMask"] == ["0027"]
    assert "/etc/tradingd/env" not in " ".join(retrain.get("EnvironmentFile", []))
    assert retrain["EnvironmentFile"] == ["-/etc/tradingd/retrain.env"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_the_retrain_unit_passes_systemd_analyze_verify(tmp_path):
    exe = shutil.which("tradingd")
    if exe is None:
        pytest.skip("the tradingd entry point is not on PATH")
    text = (ROOT / "systemd" / "tradingd-retrain.service").read_text()
    unit = tmp_path / "tradingd-retrain.service"
    unit.write_text(text.replace("/opt/tradingd/venv-train/bin/tradingd", exe))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if "tradingd-retrain.service" in line and "EnvironmentFile" not in line
    ]
    assert not problems, problems


def test_the_compose_secrets_file_is_never_committed_nor_sent_to_a_build():
    """docker-compose.yml says to put the secrets in .env beside it, but git did not ignore
    it (`git add -A` committed the keys), and no .dockerignore kept it out of the context."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", ".env"], capture_output=True
    )
    assert ignored.returncode == 0
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in dockerignore and "var/" in dockerignore
    # What the image copies is not ignored.
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert src.rstrip("/") + "/" not in dockerignore and src not in dockerignore


def test_the_systemd_note_names_every_endpoint_the_token_protects():
    """systemd/README.md said the token guards /pause, /resume and /flatten: /reset-halt,
    which lifts a halted kill switch, was left out of what the operator protects."""
    from tradingd.health.server import CONTROL_ACTIONS

    text = " ".join((ROOT / "systemd" / "README.md").read_text().split())
    token = text[text.index("TRADINGD_HEALTH_TOKEN") :]
    token = token[: token.index(").")]
    assert [a for a in CONTROL_ACTIONS if f"/{a}`" not in token] == []


def test_the_exit_codes_documented_for_redis_are_what_the_start_does():
    """README's exit-code list and systemd/README.md said `tradingd run` exits 2 (restarted)
    for "a database or Redis that does not answer yet", while the start only warns about
    Redis (`preflight.redis_unreachable`: it is a cache). Each text's exit-2 list names no
    Redis, and each says the warning."""
    for path, begins, ends in (
        (ROOT / "README.md", "2 for every other error, restarted:", "75 (EX_TEMPFAIL"),
        (ROOT / "systemd" / "README.md", "Any other error exits 2", "after 5 failed starts"),
    ):
        text = " ".join(path.read_text().split())
        exit_2 = text[text.index(begins) : text.index(ends, text.index(begins))]
        assert "Redis" not in exit_2, (path, exit_2)
        assert "`preflight.redis_unreachable`" in text, path
    # The unit's own comment on its exit codes said the same as the READMEs did.
    comment = " ".join(
        ln.lstrip("# ") for ln in UNIT.read_text().splitlines() if ln.startswith("#")
    )
    exit_2 = comment[comment.index("Every other error exits 2") :]
    exit_2 = exit_2[: exit_2.index(". ")]
    assert "Redis" not in exit_2, exit_2
    assert "preflight.redis_unreachable" in comment


def test_the_image_runs_as_compose_and_the_unit_do_and_pins_its_base_images():
    """Sandbox trial, minor findings: the Dockerfile left XDG_CACHE_HOME and
    TRADINGD_LOCK_DIR to compose (a plain `docker run` kept caches and account locks under
    the image's home), its HEALTHCHECK hard-coded port 8080 whatever port the daemon was
    given, python:3.11-slim and redis:7-alpine floated while TimescaleDB was pinned, and the
    install note's `mkdir -p var` under root's umask made var/ 0755 (run names listable)."""
    import json

    from tradingd.config import load_config

    text = (ROOT / "Dockerfile").read_text()
    for image in re.findall(r"^FROM\s+(\S+)", text, flags=re.M):
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), image
    redis = _compose()["services"]["redis"]["image"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", redis), redis
    runtime = text[text.index("AS runtime") :]
    env = _compose()["services"]["tradingd"]["environment"]
    for var in ("XDG_CACHE_HOME", "TRADINGD_LOCK_DIR", "MPLCONFIGDIR"):
        assert re.search(rf"\b{var}={re.escape(env[var])}(\s|$)", runtime), var
    # The HEALTHCHECK asks the port the daemon listens on: the override it is given.
    check = runtime[runtime.index("HEALTHCHECK") :].split("CMD", 1)[1].split("\n#", 1)[0]
    argv = json.loads(check.strip())
    assert "8080" not in " ".join(argv)
    compile(argv[-1], "HEALTHCHECK", "exec")
    assert "os.environ['TRADINGD_HEALTH__PORT']" in argv[-1]
    assert re.search(r"^ENV TRADINGD_HEALTH__PORT=", runtime, flags=re.M)
    files = [ROOT / "config/default.toml", ROOT / "config/paper.toml", ROOT / "config/docker.toml"]
    assert load_config(files, env={"TRADINGD_HEALTH__PORT": "9090"}).health.port == 9090
    # var/: the service's, not listable by other users.
    made = [ln for ln in _install_note_lines() if "/opt/tradingd/var" in ln and "-d" in ln]
    assert made and all("-m 0750" in ln for ln in made), made
