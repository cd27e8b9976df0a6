# syntax=docker/dockerfile:1
# jobservice: built as a wheel (migrations and schemas ship inside the package), installed
# non-editable into a slim image, run as the non-root user 10001.
#   docker build -t jobservice .      docker run jobservice [run|migrate|demo|...]

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY sql ./sql
COPY schemas ./schemas
# The project's wheel, then wheels of all its dependencies next to it.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/jobservice-*.whl

FROM python:3.11-slim
LABEL org.opencontainers.image.title="jobservice" \
      org.opencontainers.image.description="Asyncio job execution microservice" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Installed from the build stage's wheels only (no index); the wheels stay out of the layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/jobservice-*.whl \
    && useradd --system --uid 10001 --user-group --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin jobservice
WORKDIR /tmp
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["jobservice"]
CMD ["run"]
