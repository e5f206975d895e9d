#!/usr/bin/env bash
# A private Docker engine for chatd's container test path.
#
#   scripts/container-engine.sh start    install Debian's engine if missing, start dockerd
#   scripts/container-engine.sh stop     remove chatd's containers, stop dockerd
#   scripts/container-engine.sh status   exit 0 and print the socket when the engine answers
#   scripts/container-engine.sh env      print `export DOCKER_HOST=...` for eval
#   scripts/container-engine.sh install  only install what is missing: docker.io, debootstrap
#
# The engine listens on a private socket ($CHATD_DOCKER_SOCK, default
# /run/chatd-docker.sock) with a private data root ($CHATD_DOCKER_ROOT, default
# /var/lib/chatd-docker, kept across runs: that is the image cache) and a
# private exec root. It changes no firewall or forwarding settings and creates
# no bridge (--iptables=false --ip6tables=false --ip-forward=false
# --bridge=none): chatd's containers need no outbound network. They run with
# `--network host` on free 127.0.0.1 ports, and images build with
# `--network host`. `stop` removes every container, stops dockerd and its
# containerd, and removes the socket and exec root: nothing keeps running.
# Needs root (dockerd does).
set -euo pipefail

SOCK=${CHATD_DOCKER_SOCK:-/run/chatd-docker.sock}
DATA_ROOT=${CHATD_DOCKER_ROOT:-/var/lib/chatd-docker}
EXEC_ROOT=${CHATD_DOCKER_EXEC_ROOT:-/run/chatd-docker}
PIDFILE=$EXEC_ROOT/dockerd.pid
LOG=${CHATD_DOCKER_LOG:-$DATA_ROOT/dockerd.log}
export DOCKER_HOST=unix://$SOCK

die() { echo "container-engine: $*" >&2; exit 1; }

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_engine() {
    local packages=""
    command -v dockerd >/dev/null && command -v docker >/dev/null || packages=" docker.io"
    [ "${1:-}" != with-debootstrap ] || command -v debootstrap >/dev/null || packages="$packages debootstrap"
    [ -n "$packages" ] || return 0
    [ "$(id -u)" = 0 ] || die "dockerd is not installed; run as root to install Debian's docker.io"
    command -v apt-get >/dev/null || die "dockerd is not installed and this is not a Debian system"
    echo "container-engine: installing Debian's$packages (no recommended packages)" >&2
    # Keep the package's init script from starting a system-wide engine:
    # a temporary policy-rc.d (only when none exists), removed afterwards.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; own_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 $packages >/dev/null || rc=$?
    if [ "$rc" != 0 ]; then
        apt-get update -qq -o DPkg::Lock::Timeout=300 && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o DPkg::Lock::Timeout=300 $packages >/dev/null && rc=0
    fi
    [ "$own_policy" = 1 ] && rm -f "$policy"
    [ "$rc" = 0 ] || die "could not install$packages"
}

start() {
    if answers; then echo "container-engine: already running on $SOCK"; return 0; fi
    [ "$(id -u)" = 0 ] || die "dockerd needs root"
    install_engine
    mkdir -p "$DATA_ROOT" "$EXEC_ROOT"
    # dockerd starts and owns its own containerd under the exec root.
    setsid dockerd \
        --host "unix://$SOCK" \
        --data-root "$DATA_ROOT" \
        --exec-root "$EXEC_ROOT" \
        --pidfile "$PIDFILE" \
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        --bridge=none \
        --userland-proxy=false \
        --log-level warn \
        >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
        if answers; then echo "container-engine: dockerd $(docker version --format '{{.Server.Version}}') on $SOCK"; return 0; fi
        kill -0 $! 2>/dev/null || break
        sleep 0.2
    done
    tail -n 20 "$LOG" >&2 || true
    stop >/dev/null 2>&1 || true
    die "dockerd did not answer on $SOCK (log: $LOG)"
}

stop() {
    if answers; then
        ids=$(docker ps -aq)
        [ -z "$ids" ] || docker rm -f $ids >/dev/null
    fi
    if [ -f "$PIDFILE" ]; then
        pid=$(cat "$PIDFILE")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
    fi
    # dockerd's own containerd exits with it; remove what is left of the runtime state.
    for mnt in $(awk -v r="$EXEC_ROOT" -v d="$DATA_ROOT" '$2 ~ "^"r || $2 ~ "^"d {print $2}' /proc/mounts | sort -r); do
        umount -l "$mnt" 2>/dev/null || true
    done
    rm -rf "$EXEC_ROOT" "$SOCK"
    echo "container-engine: stopped (image cache kept in $DATA_ROOT)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if answers; then echo "running on $SOCK"; else echo "not running"; exit 1; fi ;;
    env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
    install) install_engine with-debootstrap ;;
    *) echo "usage: $0 start|stop|status|env|install" >&2; exit 2 ;;
esac
