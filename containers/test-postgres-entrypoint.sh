#!/bin/sh
# initdb on first start (superuser postgres, password $POSTGRES_PASSWORD over
# TCP), then exec postgres with the arguments given (e.g. -c port=54321).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-postgres}" >"$pwfile"
    initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
fi
exec postgres -D "$PGDATA" "$@"
