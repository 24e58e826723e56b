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

FROM python:3.11-slim AS build
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

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# matplotlib's config folder on the var volume (a library that loads it wrote plain-text
# warnings into the JSON log where the image's file system is read-only, as compose runs it).
ENV MPLCONFIGDIR=/opt/tradingd/var/cache/matplotlib
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels tradingd \
    && rm -rf /wheels \
    && python -c "import importlib.util as u, sys; bad = [m for m in ('tensorflow', 'keras', 'sklearn') if u.find_spec(m)]; sys.exit(f'training libraries in the runtime image: {bad}' if bad else 0)"
RUN useradd --system --uid 10001 --create-home --home-dir /opt/tradingd tradingd
WORKDIR /opt/tradingd
COPY config ./config
RUN mkdir -p var && chown tradingd:tradingd var
USER 10001
VOLUME ["/opt/tradingd/var"]
EXPOSE 8080
# /health answers 200 while the event loop runs (503 when it is stalled).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status == 200 else 1)"]
# Logs are JSON lines on stderr; SIGTERM is a clean stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tradingd"]
CMD ["run", "-c", "config/default.toml", "-c", "config/paper.toml", "-c", "config/docker.toml"]
