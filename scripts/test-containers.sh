#!/usr/bin/env bash
# `make test-containers`: the container path, end to end, on the private engine.
#   1. scripts/container-engine.sh start (stopped again at exit if started here)
#   2. scripts/build-test-image.sh: Debian base + PostgreSQL test image (cached)
#   3. the pgTAP, migration and container-harness suites through testcontainers
#      (CHATD_TEST_DOCKER=always: no silent fallback to the local cluster)
#   4. scripts/build-chatd-image.sh + scripts/smoke-chatd-image.sh: chatd:local
#      runs migrate, worker and fakellm in containers and answers one chat
# Exits 77 when the engine cannot start here (nothing was tested).
set -euo pipefail
cd "$(dirname "$0")/.."
export CHATD_DOCKER_SOCK=${CHATD_DOCKER_SOCK:-/run/chatd-docker.sock}
export DOCKER_HOST=unix://$CHATD_DOCKER_SOCK
BIN=${BIN:-.venv/bin}
t0=$SECONDS

started_engine=0
if ! scripts/container-engine.sh status >/dev/null 2>&1; then
    if ! scripts/container-engine.sh start; then
        echo "test-containers: the Docker engine cannot start on this machine" >&2
        exit 77
    fi
    started_engine=1
fi
on_exit() {
    leftovers=$(docker ps -aq --filter label=org.chatd.test 2>/dev/null || true)
    [ -z "$leftovers" ] || { echo "test-containers: removing leftover containers" >&2; docker rm -f $leftovers >/dev/null; }
    [ "$started_engine" = 0 ] || scripts/container-engine.sh stop
}
trap on_exit EXIT

PG_IMAGE=$(scripts/build-test-image.sh)
echo "test-containers: images ready after $((SECONDS - t0)) s ($PG_IMAGE)"

CHATD_TEST_DOCKER=always CHATD_TEST_IMAGE=$PG_IMAGE \
    "$BIN/pytest" -q -m "containers or not containers" -p no:cacheprovider \
    tests/test_pgtap.py tests/python/test_migrate.py tests/python/test_containers.py ${PYTEST_ARGS:-}

CHATD_IMAGE=$(PYTHON="$BIN/python" scripts/build-chatd-image.sh)
scripts/smoke-chatd-image.sh "$CHATD_IMAGE" "$PG_IMAGE"
echo "test-containers: done in $((SECONDS - t0)) s"
