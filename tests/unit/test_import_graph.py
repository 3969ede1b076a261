"""The import graph of `deployments`: no circles, and the layers import one way only.

    rtc ──► avatar ──► asr ──► common        tts ──► common        llm ──► common        (serve_app reads them all)
    rtc ──► asr, llm (the conversation: VAD, recogniser calls, the chat)

`common` is the shared contract (units, features, model registry, errors) and imports nothing
else of ours; `asr` never imports `avatar` (features do not depend on who consumes them).
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "deployments"
# part -> the parts it may import (besides itself)
ALLOWED = {
    "common": set(),
    "asr": {"common"},
    "tts": {"common"},
    "llm": {"common"},
    "avatar": {"common", "asr"},
    "rtc": {"common", "avatar", "asr", "llm"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Our modules that `path` imports (a `from pkg import name` of a submodule counts as that submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & modules
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    return {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_layers_import_one_way() -> None:
    wrong = [f"{src} -> {dst}" for src, dsts in _graph().items() for dst in dsts
             if _part(src) in ALLOWED and _part(dst) not in ALLOWED[_part(src)] | {_part(src)}]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodules is how packages work, not a circle;
    # a module importing its own package's __init__ (or any longer loop) is.
    edges = {src: {d for d in dsts if not d.startswith(src + ".")} for src, dsts in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_graph_is_not_empty() -> None:
    graph = _graph()
    assert "deployments.common.models" in graph["deployments.avatar.deployment"]
    assert "deployments.common.features" in graph["deployments.asr.mel_stream"]
