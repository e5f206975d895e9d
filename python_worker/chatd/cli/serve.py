"""`chatd serve`: the HTTP API, SSE streams and the web page (docs/http.md)."""

from __future__ import annotations

import argparse
import sys

from chatd.cli.common import Exit, fail

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """CHATD_JWT_SECRET=dev-secret chatd serve --database-url postgresql:///chatd --port 8080"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the chats API over HTTP. Every setting is also an environment variable "
        "CHATD_<NAME> (CHATD_JWT_SECRET, CHATD_TRUSTED_USER_HEADER, CHATD_MAX_BODY_BYTES, ...); "
        "flags win."
    )
    parser.add_argument("--database-url", default=None, help="default: $CHATD_DATABASE_URL, else $DATABASE_URL")
    parser.add_argument("--read-database-url", default=None,
                        help="a read replica for snapshots, message pages and chat lists "
                        "(default: $CHATD_READ_DATABASE_URL; none: the primary answers all)")
    parser.add_argument("--host", default=None, help="default: $CHATD_HOST, else 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $CHATD_PORT, else 8080")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug", "trace"],
                        help="uvicorn's log level (default: info)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from chatd.http import ServeSettings, create_app

    try:
        settings = ServeSettings.from_env(
            database_url=args.database_url, read_database_url=args.read_database_url,
            host=args.host, port=args.port,
        )
        if not settings.database_url:
            raise ValueError("no database: set CHATD_DATABASE_URL or DATABASE_URL, or pass --database-url")
        app = create_app(settings)
    except ValueError as exc:
        fail(str(exc).removeprefix("chatd serve: "), Exit.USAGE)
    print(f"chatd serve: http://{settings.host}:{settings.port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return Exit.OK
