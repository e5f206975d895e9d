# The chatd worker: `docker build -t chatd .` then
#   docker run --rm -e DATABASE_URL=postgresql://chatd_worker@db/app -e OPENAI_API_KEY=... chatd
# Runtime dependencies only; no compiler or build tools in the final image
# (psycopg[binary] ships its own libpq).
#
# BASE is the base image: the Python slim image by default; any Debian-like
# image works (Debian's python3 is installed when it has none; this repo's CI
# uses its own debootstrap base, see scripts/build-chatd-image.sh). Wheels
# placed in containers/wheels/ are installed with no index (an offline build);
# otherwise pip installs from PyPI.

ARG BASE=python:3.11-slim

FROM ${BASE} AS runtime
RUN if ! command -v python3 >/dev/null; then \
        apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin chatd

FROM runtime AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY python_worker ./python_worker
COPY migrations ./migrations
COPY sql ./sql
COPY containers/wheels /wheels
RUN python3 -m venv /opt/chatd \
    && if ls /wheels/*.whl >/dev/null 2>&1; then \
        /opt/chatd/bin/pip install --no-cache-dir --no-index --find-links /wheels chatd; \
    else \
        /opt/chatd/bin/pip install --no-cache-dir --upgrade pip \
        && /opt/chatd/bin/pip install --no-cache-dir .; \
    fi

FROM runtime
COPY --from=build /opt/chatd /opt/chatd
ENV PATH=/opt/chatd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHATD_LOG_FORMAT=json
USER chatd
# SIGTERM drains in-flight turns for CHATD_SHUTDOWN_GRACE seconds (default 30):
# give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatd"]
CMD ["worker"]
