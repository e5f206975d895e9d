"""What acquire_chats hands out as a turn's tools, by where the tools come
from: the chat (client tools, MCP servers, agents) or its model (MCP
servers, agents). acquire_chats skips chatd._turn_tools for a chat with
none of these; every source must still reach the worker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from chatd.testing import Factory

TOOL = [{"name": "lookup", "description": "Look it up", "input_schema": {"type": "object"}}]


def claim_tools(conn: psycopg.Connection[Any], chat: uuid.UUID) -> Any:
    rows = conn.execute("SELECT chat_id, tools FROM chatd.acquire_chats('w1', 10)").fetchall()
    return dict(rows)[chat]


@pytest.fixture
def setup(conn: psycopg.Connection[Any], factory: Factory) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    org = factory.org()
    user = factory.user(org)
    model = factory.model_config(is_default=True)
    conn.execute("INSERT INTO chatd.mcp_servers (name, url) VALUES ('docs', 'http://127.0.0.1:9/mcp')")
    return org, user, model


def create(conn: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID, **kw: Any) -> uuid.UUID:
    chat: uuid.UUID = conn.execute(
        "SELECT chatd.create_chat(%s, %s, '\"hi\"', p_tools => %s, p_mcp_servers => %s, p_agents => %s)",
        (user, org, json.dumps(kw["tools"]) if "tools" in kw else None, kw.get("mcp_servers"), kw.get("agents")),
    ).fetchone()[0]
    return chat


def test_a_chat_without_tools_on_a_model_without_tools_gets_none(
    conn: psycopg.Connection[Any], setup: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
) -> None:
    org, user, _model = setup
    assert claim_tools(conn, create(conn, user, org)) is None


def test_client_tools_of_the_chat_reach_the_turn(
    conn: psycopg.Connection[Any], setup: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
) -> None:
    org, user, _model = setup
    tools = claim_tools(conn, create(conn, user, org, tools=TOOL))
    assert [t["name"] for t in tools["client"]] == ["lookup"]


def test_mcp_servers_of_the_chat_reach_the_turn(
    conn: psycopg.Connection[Any], setup: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
) -> None:
    org, user, _model = setup
    tools = claim_tools(conn, create(conn, user, org, mcp_servers=["docs"]))
    assert [s["name"] for s in tools["mcp_servers"]] == ["docs"]


def test_mcp_servers_of_the_model_reach_the_turn(
    conn: psycopg.Connection[Any], setup: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
) -> None:
    org, user, model = setup
    conn.execute("UPDATE chatd.model_configs SET mcp_servers = '{docs}' WHERE id = %s", (model,))
    tools = claim_tools(conn, create(conn, user, org))
    assert [s["name"] for s in tools["mcp_servers"]] == ["docs"]


def test_agents_of_the_chat_reach_the_turn(
    conn: psycopg.Connection[Any], setup: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
) -> None:
    org, user, _model = setup
    tools = claim_tools(conn, create(conn, user, org, agents=True))
    assert [t["name"] for t in tools["builtin"]] == ["spawn_agent"]


def test_agents_of_the_model_reach_the_turn(
    conn: psycopg.Connection[Any], setup: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
) -> None:
    org, user, model = setup
    conn.execute("UPDATE chatd.model_configs SET agents = TRUE WHERE id = %s", (model,))
    tools = claim_tools(conn, create(conn, user, org))
    assert [t["name"] for t in tools["builtin"]] == ["spawn_agent"]


def test_every_chat_of_one_claim_gets_its_own_model_and_tools(
    conn: psycopg.Connection[Any], factory: Factory, setup: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
) -> None:
    """The claim looks each model up once: chats on two models, with and
    without tools, each get theirs."""
    org, user, model = setup
    other = factory.model_config(model="other-model")
    plain = create(conn, user, org)
    tooled = conn.execute(
        "SELECT chatd.create_chat(%s, %s, '\"hi\"', p_model_config_id => %s, p_tools => %s)",
        (user, org, other, json.dumps(TOOL)),
    ).fetchone()[0]
    rows = {r[0]: r for r in conn.execute("SELECT chat_id, model, tools FROM chatd.acquire_chats('w1', 10)")}
    assert rows[plain][1]["model_config_id"] == str(model) and rows[plain][2] is None
    assert rows[tooled][1]["model_config_id"] == str(other) and rows[tooled][1]["model"] == "other-model"
    assert [t["name"] for t in rows[tooled][2]["client"]] == ["lookup"]
