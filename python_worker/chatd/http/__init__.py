"""chatd.http: `chatd serve`, the chats API over HTTP (docs/http.md).

- `app.py`: `create_app` (Starlette), the resources, one client call each;
- `auth.py`: pluggable authentication (JWT bearer, trusted header, a hook);
- `problems.py`: RFC 9457 problem details, the one SQLSTATE -> status table;
- `bodies.py`: request parsing (size limit, JSON, unknown fields, UUIDs);
- `sse.py`: `GET /api/chats/{id}/stream`, Server-Sent Events over a
  `Subscription`, resumable by ``Last-Event-ID``;
- `openapi.py`: the OpenAPI document; `settings.py`: `ServeSettings` (CHATD_*);
- `static/`: the web page served at ``/`` (no build step, no CDN).

May import chatd.client, chatd.protocol and chatd.config; never chatd.worker,
chatd.llm, chatd.cli or chatd.testing.
"""

from __future__ import annotations

from chatd.http.app import create_app
from chatd.http.auth import (
    Authenticator,
    HookAuth,
    Identity,
    JWTAuth,
    TrustedHeaderAuth,
    issue_token,
)
from chatd.http.settings import ServeSettings

__all__ = [
    "Authenticator",
    "HookAuth",
    "Identity",
    "JWTAuth",
    "ServeSettings",
    "TrustedHeaderAuth",
    "create_app",
    "issue_token",
]
