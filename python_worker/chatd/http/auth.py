"""Pluggable authentication of `chatd serve`: who is acting, never "whoever
you say you are" by default. An `Authenticator` turns a request into an
`Identity` or raises `Unauthenticated`; the SQL functions stay the
authorization boundary (they check that the user owns the chat and belongs
to the organization)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import jwt
from starlette.requests import HTTPConnection

from chatd.http.settings import ServeSettings

__all__ = [
    "Authenticator",
    "HookAuth",
    "Identity",
    "JWTAuth",
    "TrustedHeaderAuth",
    "Unauthenticated",
    "authenticator_from_settings",
    "issue_token",
]


@dataclass(frozen=True)
class Identity:
    user_id: UUID
    organization_id: UUID | None = None


class Unauthenticated(Exception):
    """No acceptable credentials: a 401 problem."""


class Authenticator(Protocol):
    async def __call__(self, request: HTTPConnection) -> Identity: ...


def _uuid(value: object, what: str) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise Unauthenticated(f"{what} is not a UUID") from None


class JWTAuth:
    """``Authorization: Bearer <jwt>``: ``sub`` is the user id, ``org`` the
    organization id; ``exp`` is required. Signed with ``secret`` (HS*) or
    verified with ``public_key`` (RS*/ES*, PEM)."""

    def __init__(
        self, *, secret: str = "", public_key: str = "", algorithms: tuple[str, ...] = ("HS256",),
        audience: str = "",
    ) -> None:
        if not secret and not public_key:
            raise ValueError("JWTAuth needs a secret or a public key")
        self.key = public_key or secret
        self.algorithms = list(algorithms)
        self.audience = audience or None

    async def __call__(self, request: HTTPConnection) -> Identity:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            # EventSource cannot set headers: the page passes ?access_token=
            token = request.query_params.get("access_token", "")
            if not token:
                raise Unauthenticated("a bearer token is required")
        try:
            claims = jwt.decode(
                token.strip(), self.key, algorithms=self.algorithms, audience=self.audience,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        org = claims.get("org")
        return Identity(_uuid(claims["sub"], "sub"), _uuid(org, "org") if org is not None else None)


class TrustedHeaderAuth:
    """Behind an authenticating proxy that sets (and strips from clients)
    the user header, and optionally the organization header. Only when
    explicitly enabled (CHATD_TRUSTED_USER_HEADER)."""

    def __init__(self, user_header: str, org_header: str = "") -> None:
        if not user_header:
            raise ValueError("TrustedHeaderAuth needs a header name")
        self.user_header = user_header
        self.org_header = org_header

    async def __call__(self, request: HTTPConnection) -> Identity:
        user = request.headers.get(self.user_header)
        if not user:
            raise Unauthenticated(f"header {self.user_header} is missing")
        org = request.headers.get(self.org_header) if self.org_header else None
        return Identity(_uuid(user, self.user_header), _uuid(org, self.org_header) if org else None)


class HookAuth:
    """The mounting application supplies the acting user: ``hook(request)``
    returns an Identity, or None for 401."""

    def __init__(self, hook: Callable[[HTTPConnection], Awaitable[Identity | None]]) -> None:
        self.hook = hook

    async def __call__(self, request: HTTPConnection) -> Identity:
        identity = await self.hook(request)
        if identity is None:
            raise Unauthenticated("not signed in")
        return identity


def authenticator_from_settings(settings: ServeSettings) -> Authenticator:
    """Trusted header when enabled, else JWT; neither configured is an error
    (there is no anonymous mode)."""
    if settings.trusted_user_header:
        return TrustedHeaderAuth(settings.trusted_user_header, settings.trusted_org_header)
    if settings.jwt_secret or settings.jwt_public_key:
        return JWTAuth(
            secret=settings.jwt_secret, public_key=settings.jwt_public_key,
            algorithms=tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()),
            audience=settings.jwt_audience,
        )
    raise ValueError(
        "chatd serve: no authentication configured: set CHATD_JWT_SECRET (or "
        "CHATD_JWT_PUBLIC_KEY), or CHATD_TRUSTED_USER_HEADER behind a proxy"
    )


def issue_token(
    user_id: UUID, organization_id: UUID | None, *, secret: str, ttl_seconds: int = 3600,
    algorithm: str = "HS256", audience: str = "",
) -> str:
    """A signed development token (`chatd token issue`)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": str(user_id), "iat": now, "exp": now + ttl_seconds}
    if organization_id is not None:
        claims["org"] = str(organization_id)
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)
