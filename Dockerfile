# tradingd runtime image, in two stages: the first builds wheels of the package and its
# runtime dependencies; the second installs only those (inference and replay: onnxruntime,
# no TensorFlow, no scikit-learn, no compilers) and runs as an unprivileged user.
#
#   docker build --build-arg TRADINGD_BUILD_COMMIT=$(git rev-parse HEAD) -t tradingd .
#   docker compose up            (TimescaleDB, Redis and the daemon; see docker-compose.yml)
#   docker run --stop-timeout 60 ...   (a stop finishes its bar; Docker's default grace is 10 s)
#
# The build context has no .git (.dockerignore): the commit the image's `tradingd --version`
# and run records name is the build argument's (without it: "commit unknown").
#
# The HEALTHCHECK marks a stalled daemon unhealthy; Docker itself restarts only one that exits
# (an orchestrator's liveness probe on /health, or an autoheal container, restarts the rest).

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md MANIFEST.in build_commit.py ./
COPY daemon ./daemon
COPY plugins ./plugins
COPY models ./models
# Read by build_commit.py (the build hook) and recorded in the wheel; empty: unknown.
ARG TRADINGD_BUILD_COMMIT=""
# No extras: the `train` extra (TensorFlow, scikit-learn) never enters the runtime image.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# matplotlib's config folder, the data and feature caches and the account locks on the var
# volume, as in systemd/tradingd.service and compose: `docker run` without compose had them
# under the image's home (lost with the container, read-only under --read-only).
ENV MPLCONFIGDIR=/opt/tradingd/var/cache/matplotlib \
    XDG_CACHE_HOME=/opt/tradingd/var/cache \
    TRADINGD_LOCK_DIR=/opt/tradingd/var/locks
# The health server's port, as the configuration override TRADINGD_HEALTH__PORT (it wins
# over health.port in the files): the daemon listens and the HEALTHCHECK asks there, so the
# two cannot differ. Another port: `--build-arg TRADINGD_HEALTH_PORT=9090`, or `docker run
# -e TRADINGD_HEALTH__PORT=9090` (and publish that port).
ARG TRADINGD_HEALTH_PORT=8080
ENV TRADINGD_HEALTH__PORT=${TRADINGD_HEALTH_PORT}
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels tradingd \
    && rm -rf /wheels \
    && python -c "import importlib.util as u, sys; bad = [m for m in ('tensorflow', 'keras', 'sklearn') if u.find_spec(m)]; sys.exit(f'training libraries in the runtime image: {bad}' if bad else 0)"
RUN useradd --system --uid 10001 --create-home --home-dir /opt/tradingd tradingd
WORKDIR /opt/tradingd
COPY config ./config
RUN mkdir -p -m 0750 var && chown tradingd:tradingd var
USER 10001
VOLUME ["/opt/tradingd/var"]
EXPOSE ${TRADINGD_HEALTH__PORT}
# /health answers 200 while the event loop runs (503 when it is stalled).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['TRADINGD_HEALTH__PORT']}/health\", timeout=4).status == 200 else 1)"]
# Logs are JSON lines on stderr; SIGTERM is a clean stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tradingd"]
CMD ["run", "-c", "config/default.toml", "-c", "config/paper.toml", "-c", "config/docker.toml"]
