"""Test support for chatd and for users' own test suites.

* `chatd.testing.harness`: a real PostgreSQL for tests (an existing server,
  a testcontainer, or a throwaway local cluster), a migrated template
  database, a fresh clone per test, login roles and row factories;
* `chatd.testing.pytest_plugin`: those as pytest fixtures (`pytest_plugins =
  ["chatd.testing.pytest_plugin"]`);
* `chatd.testing.fakellm`: the scriptable fake LLM server (OpenAI and
  Anthropic wire formats).

Nothing here reads a source checkout: SQL fixture files are passed in
(``build_template(server, fixtures=[...])``). May import any chatd module
except chatd.cli; the product (worker, client, llm, protocol, migrate) never
imports chatd.testing. Only the `chatd fakellm` and `chatd demo` commands
do, lazily, since running the fake is their purpose.
"""

from chatd.testing.fakellm import (
    FakeLLM,
    FakeResponse,
    FakeUsage,
    Hang,
    HttpError,
    RecordedRequest,
    StreamError,
    Text,
    Truncate,
)
from chatd.testing.harness import (
    PGTAP_ASSERTIONS,
    TEST_CLUSTER_SETTINGS,
    DatabaseServer,
    Factory,
    HarnessError,
    as_role,
    build_template,
    ensure_login_roles,
    fresh_database,
    start_server,
)

__all__ = [
    "PGTAP_ASSERTIONS",
    "TEST_CLUSTER_SETTINGS",
    "DatabaseServer",
    "FakeLLM",
    "FakeResponse",
    "FakeUsage",
    "Factory",
    "Hang",
    "HarnessError",
    "HttpError",
    "RecordedRequest",
    "StreamError",
    "Text",
    "Truncate",
    "as_role",
    "build_template",
    "ensure_login_roles",
    "fresh_database",
    "start_server",
]
