"""`ServeSettings`: every setting of `chatd serve`, each also a CHATD_* variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """Defaults here; `from_env` reads ``CHATD_<FIELD>`` (upper case) for each
    field, and ``DATABASE_URL`` for the database when CHATD_DATABASE_URL is unset."""

    database_url: str = ""
    # a read replica for snapshots, message pages and chat lists, used only
    # while it has replayed the primary's position of at most
    # read_max_staleness seconds ago (chatd.client.reads; docs/scale.md)
    read_database_url: str = ""
    read_max_staleness: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8080
    # authentication: HS* with jwt_secret, RS*/ES* with jwt_public_key (PEM)
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_algorithms: str = "HS256"
    jwt_audience: str = ""
    # a header naming the acting user (and *_org the organization), set by an
    # authenticating proxy: only when this is non-empty
    trusted_user_header: str = ""
    trusted_org_header: str = ""
    max_body_bytes: int = 256 * 1024
    keepalive_seconds: float = 15.0
    stream_buffer: int = 256  # events held per SSE stream before a resync
    db_timeout: float = 5.0
    pool_size: int = 10
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServeSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"CHATD_{f.name.upper()}")
            if raw is None and f.name == "database_url":
                raw = env.get("DATABASE_URL")
            if raw is None or raw == "":
                continue
            default = f.default
            try:
                values[f.name] = type(default)(raw) if isinstance(default, (int, float)) else raw
            except ValueError:
                raise ValueError(f"CHATD_{f.name.upper()}: not a {type(default).__name__}: {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
