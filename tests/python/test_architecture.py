"""The layout rules of docs/architecture.md, checked by parsing the source:
who may import whom, one module per command, and the size limits."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from repo_support import REPO_ROOT

from chatd.cli import COMMANDS, module_name

PACKAGE = REPO_ROOT / "python_worker" / "chatd"
BENCH = REPO_ROOT / "bench"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Modules allowed over MAX_MODULE_LINES, each with its reason.
LONG_MODULES: dict[str, str] = {}

# The product never imports chatd.testing, except the commands whose purpose
# is to run its fake LLM server.
TESTING_IMPORTERS = {"chatd.cli.fakellm": "serves the fake LLM", "chatd.cli.demo": "runs on the fake LLM"}


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_of(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports(module: str) -> frozenset[str]:
    """Every chatd module ``module`` imports, anywhere in the file (lazy and
    TYPE_CHECKING imports included)."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from chatd import migrate` imports the module chatd.migrate
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in modules())
    return frozenset(name for name in found if name == "chatd" or name.startswith("chatd."))


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(importers: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module in modules() if _in(module, importers)
        for target in imports(module) if any(_in(target, f) for f in forbidden)
    )


def test_the_worker_never_imports_the_client_the_cli_or_the_test_support() -> None:
    assert _violations("chatd.worker", ("chatd.client", "chatd.cli", "chatd.testing")) == []


def test_the_llm_adapters_import_no_worker_client_cli_or_test_support() -> None:
    assert _violations("chatd.llm", ("chatd.worker", "chatd.client", "chatd.cli", "chatd.testing")) == []


def test_the_client_imports_no_worker_llm_cli_or_test_support() -> None:
    assert _violations("chatd.client", ("chatd.worker", "chatd.llm", "chatd.cli", "chatd.testing")) == []


def test_the_http_server_uses_only_client_protocol_and_config() -> None:
    assert _violations(
        "chatd.http", ("chatd.worker", "chatd.llm", "chatd.cli", "chatd.testing", "chatd.migrate")
    ) == []


def test_the_protocol_imports_no_other_chatd_module() -> None:
    others = sorted(
        f"{module} imports {target}"
        for module in modules() if _in(module, "chatd.protocol")
        for target in imports(module) if not _in(target, "chatd.protocol")
    )
    assert others == []


def test_nothing_in_the_product_imports_the_test_support() -> None:
    product = [m for m in modules() if not _in(m, "chatd.testing")]
    offenders = sorted(
        f"{module} imports {target}"
        for module in product if not any(_in(module, allowed) for allowed in TESTING_IMPORTERS)
        for target in imports(module) if _in(target, "chatd.testing")
    )
    assert offenders == []


def test_no_library_module_imports_the_cli() -> None:
    library = [m for m in modules() if not _in(m, "chatd.cli") and m != "chatd.__main__"]
    offenders = sorted(
        f"{module} imports {target}"
        for module in library for target in imports(module) if _in(target, "chatd.cli")
    )
    assert offenders == []


def test_every_command_is_one_module_of_chatd_cli() -> None:
    for command in COMMANDS:
        assert module_name(command) in modules(), f"`chatd {command}` has no module"
    commands = {module_name(c) for c in COMMANDS}
    extra = [m for m in modules() if _in(m, "chatd.cli") and m not in commands
             and m not in ("chatd.cli", "chatd.cli.common")
             and not any(_in(m, command) for command in commands)]
    assert extra == [], "every module of chatd.cli is a command, a command's package, or the shared common"


def test_only_the_cli_defines_command_line_arguments() -> None:
    defining = sorted(
        module for module, path in modules().items() if not _in(module, "chatd.cli")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("add_argument", "add_subparsers", "add_argument_group")
    )
    assert defining == []


def test_every_subpackage_says_what_lives_there_and_what_it_may_import() -> None:
    for module, path in modules().items():
        if path.name == "__init__.py" and module != "chatd":
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            assert "import" in doc.lower(), f"{module}: docstring names no import rule"


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(BENCH.glob("*.py"))


def test_modules_stay_under_the_size_limit() -> None:
    too_long = []
    for path in _python_files():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        name = str(path.relative_to(REPO_ROOT))
        if lines > MAX_MODULE_LINES and name not in LONG_MODULES:
            too_long.append(f"{name}: {lines} lines")
    assert too_long == []


def _reasoned(node: ast.FunctionDef | ast.AsyncFunctionDef, source: list[str]) -> bool:
    """A comment among the first lines of the body (after the docstring)."""
    body = node.body
    start = body[0].end_lineno if ast.get_docstring(node) and body[0].end_lineno else node.lineno
    first = body[1].lineno if ast.get_docstring(node) and len(body) > 1 else body[0].lineno
    return any(line.strip().startswith("#") for line in source[start:first])


def test_long_functions_say_why_at_their_top() -> None:
    long = []
    for path in _python_files():
        text = path.read_text(encoding="utf-8")
        source = text.splitlines()
        long += [
            f"{path.relative_to(REPO_ROOT)}: {node.name} "
            f"({(node.end_lineno or node.lineno) - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES
            and not _reasoned(node, source)
        ]
    assert long == []
