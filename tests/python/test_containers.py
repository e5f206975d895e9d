"""The harness's container path (chatd.testing.containers): an image used as
it is, test settings passed, no registry, no leaked container, and every
failure a clear HarnessError or a said fallback to the local cluster.

Tests marked ``containers`` need the engine of scripts/container-engine.sh
and the image of scripts/build-test-image.sh; `make test-containers` runs them
(`make test` deselects them)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from chatd.testing.containers import CONTAINER_LABEL, engine_answers, pg_major
from chatd.testing.harness import HarnessError, start_server

DEAD_ENGINE = "unix:///nonexistent/chatd-docker.sock"


@pytest.mark.parametrize(
    ("image", "major"),
    [("postgres:15-alpine", 15), ("postgres:15", 15), ("chatd-test-postgres:15.18", 15),
     ("registry.example:5000/pg/postgres:16.4-bookworm", 16), ("postgres", None), ("postgres:latest", None)],
)
def test_the_postgresql_major_is_read_from_the_image_tag(image: str, major: int | None) -> None:
    assert pg_major(image) == major


def test_an_unknown_docker_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATD_TEST_DATABASE_URL", raising=False)
    monkeypatch.setenv("CHATD_TEST_DOCKER", "sometimes")
    with pytest.raises(HarnessError, match="auto, always or never"):
        start_server()


def test_always_without_an_engine_is_a_harness_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATD_TEST_DATABASE_URL", raising=False)
    monkeypatch.setenv("CHATD_TEST_DOCKER", "always")
    monkeypatch.setenv("DOCKER_HOST", DEAD_ENGINE)
    with pytest.raises(HarnessError, match="no Docker engine answers"):
        start_server()


# --- with the engine --------------------------------------------------------


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    client = engine_answers()
    if client is None:
        pytest.fail("no Docker engine answers: scripts/container-engine.sh start, then DOCKER_HOST")
    monkeypatch.delenv("CHATD_TEST_DATABASE_URL", raising=False)
    yield client
    client.close()


def _container_ids(client: Any) -> set[str]:
    """Every container of this process (the session's own ``pg`` among them)."""
    return {c.id for c in client.containers.list(all=True, filters={"label": f"{CONTAINER_LABEL}={os.getpid()}"})}


@pytest.mark.containers
def test_a_container_session_gets_the_test_settings_and_no_reaper(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATD_TEST_DOCKER", "always")
    before = {c.id for c in engine.containers.list(all=True)}
    ours = _container_ids(engine)
    server = start_server()
    try:
        assert server.source == "testcontainers"
        assert server.admin_dsn.startswith("postgresql://postgres:postgres@127.0.0.1:")
        with psycopg.connect(server.admin_dsn) as conn:
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'max_connections', 'full_page_writes')"
            ).fetchall())
        assert settings == {"fsync": "off", "max_connections": "300", "full_page_writes": "off"}
        new = [c for c in engine.containers.list(all=True) if c.id not in before]
        assert [c.labels.get(CONTAINER_LABEL) for c in new] == [str(os.getpid())]  # no Ryuk beside it
    finally:
        server.stop()
    assert _container_ids(engine) == ours


@pytest.mark.containers
def test_a_missing_image_is_a_harness_error_when_containers_are_required(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATD_TEST_DOCKER", "always")
    monkeypatch.setenv("CHATD_TEST_IMAGE", "chatd-no-such-image:1")
    with pytest.raises(HarnessError, match="chatd-no-such-image:1 is not in the Docker engine"):
        start_server()


@pytest.mark.containers
def test_a_missing_image_falls_back_to_the_local_cluster_and_says_so(
    engine: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHATD_TEST_DOCKER", "auto")
    monkeypatch.setenv("CHATD_TEST_IMAGE", "chatd-no-such-image:1")
    server = start_server()
    try:
        assert server.source == "local"
        assert "chatd-no-such-image:1 is not in the Docker engine" in server.note  # in the session summary
    finally:
        server.stop()
    assert "using a local cluster instead" in capsys.readouterr().err


@pytest.mark.containers
def test_a_container_that_cannot_start_is_removed_and_reported(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Debian base has no PostgreSQL: the container fails to start.
    base = next((t for i in engine.images.list() for t in i.tags if t.startswith("chatd-debian:")), None)
    assert base is not None, "scripts/build-test-image.sh builds chatd-debian:<suite>"
    monkeypatch.setenv("CHATD_TEST_DOCKER", "always")
    monkeypatch.setenv("CHATD_TEST_IMAGE", base)
    ours = _container_ids(engine)
    with pytest.raises(HarnessError, match=f"could not start a PostgreSQL container from {base}"):
        start_server()
    assert _container_ids(engine) == ours


@pytest.mark.containers
def test_a_server_that_exits_is_reported_with_its_log_and_removed(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATD_TEST_DOCKER", "always")
    monkeypatch.setattr("chatd.testing.harness.TEST_CLUSTER_SETTINGS", {"no_such_setting": "1"})
    ours = _container_ids(engine)
    with pytest.raises(HarnessError, match="exited:(.|\n)*no_such_setting"):
        start_server()
    assert _container_ids(engine) == ours
