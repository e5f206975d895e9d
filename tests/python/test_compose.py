"""compose.yaml: the services `docker compose up` starts, their order, and
that every chatd command they run is one the CLI accepts. The compose
plugin is not installed on the machines that run this suite, so the file is
checked here, not by `docker compose config`."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from repo_support import REPO_ROOT

from chatd import cli

COMPOSE = REPO_ROOT / "compose.yaml"


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"])


def test_up_starts_postgres_a_one_shot_migrate_a_worker_and_the_fake_llm() -> None:
    found = services()
    default = {name for name, s in found.items() if not s.get("profiles")}
    assert default == {"postgres", "migrate", "setup", "worker", "fakellm"}
    assert all(s["image"] == "chatd:local" for name, s in found.items() if name != "postgres")


def test_the_order_is_database_then_migrate_then_setup_then_worker() -> None:
    found = services()
    assert found["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert found["setup"]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert found["worker"]["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
    assert found["migrate"]["restart"] == found["setup"]["restart"] == "no"


@pytest.mark.parametrize("service", ["migrate", "fakellm", "worker"])
def test_each_command_parses_with_the_chatd_cli(service: str) -> None:
    command = services()[service]["command"]
    parser, _ = cli.command_parser(command[0])
    parser.parse_args(command[1:])  # exits (SystemExit) on an unknown option


def test_the_worker_serves_probes_outside_its_container_and_drains_on_stop() -> None:
    worker = services()["worker"]
    assert "--metrics-host" in worker["command"] and "0.0.0.0" in worker["command"]
    assert "/readyz" in " ".join(worker["healthcheck"]["test"])
    assert worker["stop_grace_period"] == "40s"  # more than CHATD_SHUTDOWN_GRACE (30 s)
