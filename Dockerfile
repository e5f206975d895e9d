# The chatd worker: `docker build -t chatd .` then
#   docker run --rm -e DATABASE_URL=postgresql://chatd_worker@db/app -e OPENAI_API_KEY=... chatd
# Runtime dependencies only; no compiler or build tools in the final image
# (psycopg[binary] ships its own libpq).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY python_worker ./python_worker
COPY migrations ./migrations
COPY sql ./sql
RUN python -m venv /opt/chatd \
    && /opt/chatd/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/chatd/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin chatd
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
