#!/usr/bin/env bash
# Build (once; cached in the engine) the images chatd's container path uses:
#
#   chatd-debian:<suite>          a minimal Debian made with debootstrap from the
#                                 mirror apt already uses on this machine (read
#                                 from the apt sources, never stored in the repo)
#   chatd-test-postgres:<version> that base + Debian's PostgreSQL at the host's
#                                 major and minor, pgTAP, plpgsql_check
#
# Prints the test image's name on stdout. Needs the engine
# (scripts/container-engine.sh start) and root for debootstrap. Builds use the
# host network; the containers themselves get none of their own.
# FORCE=1 rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_HOST=${DOCKER_HOST:-unix://${CHATD_DOCKER_SOCK:-/run/chatd-docker.sock}}
export DOCKER_BUILDKIT=0   # the classic builder: no buildx plugin needed

log() { echo "build-test-image: $*" >&2; }
have() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

# shellcheck disable=SC1091
. /etc/os-release
SUITE=${CHATD_DEBIAN_SUITE:-${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}}
BASE=chatd-debian:$SUITE

apt_mirror() {
    # The first Debian archive URI apt uses (deb822 .sources or one-line lists).
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' | grep -v -- '-security' | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
              | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
              | grep -v -- '-security' | head -n1 || true)
    fi
    [ -n "$uri" ] || { log "no Debian mirror found in the apt sources"; exit 1; }
    echo "$uri"
}

if have "$BASE"; then
    log "$BASE cached"
else
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 debootstrap >/dev/null
    MIRROR=$(apt_mirror)
    ROOTFS=$(mktemp -d /var/tmp/chatd-debootstrap.XXXXXX)
    trap 'rm -rf "$ROOTFS"' EXIT
    include=""
    case "$MIRROR" in https:*) include="--include=ca-certificates" ;; esac
    log "debootstrap $SUITE from the apt mirror"
    debootstrap --variant=minbase $include "$SUITE" "$ROOTFS" "$MIRROR" >/dev/null
    # Security updates as on the host, so pinned versions resolve.
    if grep -rqs -- "${SUITE}-security" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb ${MIRROR%/debian}/debian-security ${SUITE}-security main" >>"$ROOTFS/etc/apt/sources.list"
    fi
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$ROOTFS"; trap - EXIT
    log "$BASE imported"
fi

PG_VERSION=${CHATD_TEST_PG_VERSION:-$(dpkg-query -W -f='${Version}' "postgresql-${PG_MAJOR:-15}")}
PG_MAJOR=${PG_MAJOR:-15}
TAG=${PG_VERSION%%-*}            # 15.18-0+deb12u1 -> 15.18
IMAGE=chatd-test-postgres:$TAG
if have "$IMAGE"; then
    log "$IMAGE cached"
else
    log "building $IMAGE (PostgreSQL $PG_VERSION, pgTAP, plpgsql_check)"
    docker build -q --network host -f containers/test-postgres.Dockerfile \
        --build-arg BASE="$BASE" --build-arg PG_MAJOR="$PG_MAJOR" --build-arg PG_VERSION="$PG_VERSION" \
        -t "$IMAGE" . >/dev/null
fi
echo "$IMAGE"
