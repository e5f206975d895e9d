#!/usr/bin/env bash
# Smoke test of the chatd image on the private engine, three containers on the
# host network (127.0.0.1, free ports): the PostgreSQL test image, the fake LLM
# (`chatd fakellm`) and the worker (`chatd worker`), after `chatd migrate` in a
# one-off container. One chat sent with `chatd chat` (also from the image)
# must be answered by the fake. Every container is removed on exit.
#   scripts/smoke-chatd-image.sh CHATD_IMAGE PG_IMAGE
set -euo pipefail
export DOCKER_HOST=${DOCKER_HOST:-unix://${CHATD_DOCKER_SOCK:-/run/chatd-docker.sock}}
IMAGE=${1:-chatd:local}
PG_IMAGE=${2:?usage: $0 CHATD_IMAGE PG_IMAGE}
LABEL=org.chatd.test=smoke-$$
started=()
cleanup() { [ ${#started[@]} = 0 ] || docker rm -f "${started[@]}" >/dev/null 2>&1 || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
say() { echo "smoke: $*" >&2; }

PG_PORT=$(free_port)
started+=("$(docker run -d --label "$LABEL" --network host "$PG_IMAGE" -c "port=$PG_PORT" -c listen_addresses=127.0.0.1)")
DB=postgresql://postgres:postgres@127.0.0.1:$PG_PORT/postgres
for _ in $(seq 1 150); do
    docker exec "${started[0]}" pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.2
done
run() { docker run --rm --label "$LABEL" --network host -e DATABASE_URL="$DB" -e CHATD_LOG_FORMAT=text "$IMAGE" "$@"; }

say "chatd migrate"
run migrate >/dev/null
LLM_PORT=$(free_port)
started+=("$(docker run -d --label "$LABEL" --network host "$IMAGE" fakellm --port "$LLM_PORT")")
run providers add fake --kind openai-compat --base-url "http://127.0.0.1:$LLM_PORT/v1" >/dev/null
run models add fake chatd-fake --default >/dev/null
started+=("$(docker run -d --label "$LABEL" --network host -e DATABASE_URL="$DB" "$IMAGE" worker)")
say "chatd chat (worker and fake LLM in their own containers)"
answer=$(run chat --timeout 60 "the container smoke test says hello" 2>/dev/null) || {
    docker logs "${started[2]}" 2>&1 | tail -n 20 >&2; say "FAILED: no answer"; exit 1; }
case "$answer" in
    *"container smoke test says hello"*) ;;
    *) say "FAILED: unexpected answer: $answer"; exit 1 ;;
esac
status=$(docker exec -e PGPASSWORD=postgres "${started[0]}" psql -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "SELECT status FROM chatd.chats" 2>/dev/null || true)
say "answered: ${answer:0:80} (chat status: ${status:-?})"
echo "chatd image smoke test: 1 chat answered"
