"""The testcontainers PostgreSQL of the test harness (chatd.testing.harness).

The image is used as it is: nothing is installed into the container at test
time (no network is needed or given), so it must already carry pgTAP and
plpgsql_check. chatd builds one with scripts/build-test-image.sh
(``chatd-test-postgres:<major.minor>``); ``CHATD_TEST_IMAGE`` names another.
The image must exist in the engine: it is never pulled.

The container shares the host's network namespace (engines started by
scripts/container-engine.sh have no bridge) and listens on a free port of
127.0.0.1 with the test settings passed as ``-c`` options.

Ryuk, testcontainers' reaper, would be pulled from a registry: it is disabled
(``TESTCONTAINERS_RYUK_DISABLED``) and cleanup is ours: the container is
removed on every failure path, at ``DatabaseServer.stop``, and at interpreter
exit; every container carries the ``org.chatd.test`` label
(``docker rm -f $(docker ps -aq -f label=org.chatd.test)`` removes leftovers
of a killed session).
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

__all__ = ["CONTAINER_LABEL", "ContainerError", "default_image", "engine_answers", "pg_major", "start_postgres"]

CONTAINER_LABEL = "org.chatd.test"
PASSWORD = "postgres"
READY_TIMEOUT = 60.0


class ContainerError(RuntimeError):
    """The container path failed; the message says why and what to do."""


def default_image() -> str:
    return os.environ.get("CHATD_TEST_IMAGE", "chatd-test-postgres:15")


def pg_major(image: str) -> int | None:
    """The PostgreSQL major an image tag names: ``postgres:15-alpine`` -> 15,
    ``chatd-test-postgres:15.18`` -> 15; None when the tag names none."""
    name = image.rsplit("/", 1)[-1]
    tag = name.split(":", 1)[1] if ":" in name else ""
    match = re.match(r"(\d+)(?:\.\d+)*(?:$|[-_.])", tag)
    return int(match.group(1)) if match else None


def engine_answers() -> Any | None:
    """A docker client when an engine answers on DOCKER_HOST (or the default
    socket), else None."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
        return client
    except Exception:
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(container: Any, dsn: str) -> None:
    """Until the server accepts a connection; fails fast when it exits."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            wrapped = container.get_wrapped_container()
            wrapped.reload()
            if wrapped.status in ("exited", "dead"):
                logs = wrapped.logs(tail=20).decode(errors="replace")
                raise ContainerError(f"the PostgreSQL container exited:\n{logs}") from exc
            if time.monotonic() > deadline:
                raise ContainerError(f"the PostgreSQL container did not accept connections in {READY_TIMEOUT:.0f} s: {exc}") from exc
            time.sleep(0.2)


def start_postgres(client: Any, image: str, settings: Mapping[str, str]) -> tuple[str, Callable[[], None]]:
    """Start ``image``; returns the superuser DSN and the function that removes
    the container. Every failure is a ContainerError, the container removed."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as exc:
        raise ContainerError(
            f"the image {image} is not in the Docker engine (it is never pulled): build it with "
            "scripts/build-test-image.sh or set CHATD_TEST_IMAGE to an image with pgTAP and plpgsql_check"
        ) from exc
    except docker.errors.DockerException as exc:
        raise ContainerError(f"the Docker engine failed looking up {image}: {exc}") from exc

    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    testcontainers_config.ryuk_disabled = True
    port = _free_port()
    options = {**settings, "port": str(port), "listen_addresses": "127.0.0.1"}
    command = [arg for key, value in options.items() for arg in ("-c", f"{key}={value}")]
    container = (
        DockerContainer(image, command=command)  # type: ignore[arg-type]
        .with_env("POSTGRES_PASSWORD", PASSWORD)
        .with_kwargs(network_mode="host", labels={CONTAINER_LABEL: str(os.getpid())})
    )
    removed = False

    def remove() -> None:
        nonlocal removed
        if removed:
            return
        removed = True
        atexit.unregister(remove)
        try:
            container.stop()
        except Exception:  # the engine went away: nothing left to remove here
            pass

    atexit.register(remove)
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    try:
        container.start()
        _wait_ready(container, dsn)
    except ContainerError:
        remove()
        raise
    except Exception as exc:
        remove()
        raise ContainerError(f"could not start a PostgreSQL container from {image}: {exc}") from exc
    return dsn, remove
