# tradingd runtime image: inference and replay only (no TensorFlow / scikit-learn).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 tradingd
WORKDIR /opt/tradingd

COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY plugins ./plugins
COPY config ./config
COPY models ./models
RUN pip install . && mkdir -p var && chown -R tradingd:tradingd var

USER tradingd
# Logs are JSON lines on stderr; SIGTERM is a clean stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tradingd"]
CMD ["run", "-c", "config/default.toml", "-c", "config/paper.toml"]
