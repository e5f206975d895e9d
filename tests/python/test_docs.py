"""What a user reads stays true: every worker setting is in the README."""

from __future__ import annotations

from repo_support import REPO_ROOT

from chatd.config import OPTIONS


def test_readme_documents_every_worker_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for option in OPTIONS:
        assert f"`{option.env}`" in readme, option.env
        assert f"`--{option.name.replace('_', '-')}`" in readme, option.name


def test_runtime_dependencies_exclude_test_and_lint_tools() -> None:
    from importlib.metadata import requires

    runtime = [r for r in requires("chatd") or [] if "extra ==" not in r]
    names = " ".join(runtime).lower()
    assert "psycopg" in names
    for tool in ("pytest", "sqlfluff", "mypy", "ruff", "testcontainers"):
        assert tool not in names, f"{tool} must be a dev extra, not a runtime dependency"
