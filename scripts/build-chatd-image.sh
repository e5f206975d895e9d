#!/usr/bin/env bash
# Build chatd:local from the Dockerfile on the local Debian base
# (chatd-debian:<suite>, made by scripts/build-test-image.sh), offline: the
# wheels come from the host's pip configuration (pip wheel), not from inside
# the build. Cached: skipped when chatd:local exists and was built from this
# commit's sources (FORCE=1 rebuilds).
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_HOST=${DOCKER_HOST:-unix://${CHATD_DOCKER_SOCK:-/run/chatd-docker.sock}}
export DOCKER_BUILDKIT=0
. /etc/os-release
BASE=${CHATD_IMAGE_BASE:-chatd-debian:${VERSION_CODENAME}}
IMAGE=${CHATD_IMAGE:-chatd:local}
PYTHON=${PYTHON:-python3}
# The sources the image is made of: a change to any of them rebuilds it.
SOURCES=$(git ls-files -s Dockerfile pyproject.toml README.md python_worker migrations sql | sha256sum | cut -c1-16)
dirty=$(git status --porcelain -- Dockerfile pyproject.toml README.md python_worker migrations sql)
[ -z "$dirty" ] || SOURCES="$SOURCES-dirty-$(date +%s)"
if [ "${FORCE:-0}" != 1 ] && [ "$(docker image inspect -f '{{index .Config.Labels "org.chatd.sources"}}' "$IMAGE" 2>/dev/null)" = "$SOURCES" ]; then
    echo "build-chatd-image: $IMAGE cached" >&2; echo "$IMAGE"; exit 0
fi
rm -f containers/wheels/*.whl
trap 'rm -f containers/wheels/*.whl' EXIT
echo "build-chatd-image: pip wheel (host index) and docker build on $BASE" >&2
"$PYTHON" -m pip wheel -q --wheel-dir containers/wheels . >/dev/null
docker build -q --network host --build-arg BASE="$BASE" --label "org.chatd.sources=$SOURCES" -t "$IMAGE" . >/dev/null
echo "$IMAGE"
