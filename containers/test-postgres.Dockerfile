# The PostgreSQL image chatd's tests run against through testcontainers
# (scripts/build-test-image.sh builds it): Debian's PostgreSQL at exactly the
# host's version, pgTAP and plpgsql_check, nothing else. No apt at test time.
ARG BASE=chatd-debian:bookworm
FROM ${BASE}
ARG PG_MAJOR=15
ARG PG_VERSION
RUN test -n "$PG_VERSION" \
    && mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "postgresql-${PG_MAJOR}=${PG_VERSION}" "postgresql-client-${PG_MAJOR}=${PG_VERSION}" \
        "libpq5=${PG_VERSION}" "postgresql-${PG_MAJOR}-pgtap" "postgresql-${PG_MAJOR}-plpgsql-check" \
    && rm -rf /var/lib/apt/lists/*
COPY containers/test-postgres-entrypoint.sh /usr/local/bin/chatd-test-postgres
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["/usr/local/bin/chatd-test-postgres"]
