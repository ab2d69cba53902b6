"""Imports run one way: web -> domain, jobs -> domain, domain -> models, programs, providers and the small
shared modules, with no cycle anywhere in service/ and jobs/.

The graph is read from the source with `ast`, not by importing it. Every import counts as an arrow, the
ones inside functions too (a lazy import is still a dependency, only a later one); imports under
`if TYPE_CHECKING:` are left out, since they never run. `from pkg import name` is an arrow to `pkg.name`
when that is a module, else to `pkg`; a package's own `__init__` running first is not counted as an arrow
(each package would otherwise sit in a cycle with every submodule it imports). Job functions enqueued by
their dotted path (service.queues) are no import, which is the point; a test checks the paths resolve.

The rules:
- Flask (flask, flask_*) is imported only on the web side: service.app, service.cli, service.web and the
  root package's lazy `create_app`; Runtime, queues, spool, domain and jobs are Flask-free.
- No other module of service/ imports jobs or the web side (domain code takes a Session and plain values);
  below the web side, modules may import one another (domain -> models, programs, providers, queues...)
  as long as no circle forms.
- jobs import no module of the web side.
- Views import no jobs: they enqueue through service.queues.
- No cycle.
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "jobs")
WEB_SIDE = ("service.app", "service.cli", "service.web")
ENTRY = "service"  # service/__init__.py: a lazy create_app() for `flask --app service`


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def find_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under each package directory."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)  # only the `else:` of `if TYPE_CHECKING:` runs
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def arrows_of(name: str, path: Path, modules: dict[str, Path]) -> list[Arrow]:
    """Every module `name` imports: ours by their module name, others (flask, rq, ...) as written."""
    is_package = path.name == "__init__.py"
    arrows: list[Arrow] = []
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            arrows.extend(Arrow(name, alias.name, node.lineno) for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            package = name.split(".") if is_package else name.split(".")[:-1]
            anchor = package[:len(package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            arrows.append(Arrow(name, candidate if candidate in modules else base, node.lineno))
    return arrows


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> tuple[dict[str, Path], list[Arrow]]:
    modules = find_modules(root, packages)
    arrows = [arrow for name, path in modules.items() for arrow in arrows_of(name, path, modules)]
    return modules, list(dict.fromkeys(arrows))  # `from flask import a, b` is one arrow


def _under(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _is_flask(module: str) -> bool:
    top = module.split(".")[0]
    return top == "flask" or top.startswith("flask_")


def broken_rule(arrow: Arrow) -> str | None:
    """Why `arrow` is forbidden, or None."""
    source, target = arrow.source, arrow.target
    web_side = _under(source, *WEB_SIDE) or source == ENTRY
    if _is_flask(target) and not web_side:
        return "Flask is for the web side only (service.app, service.cli, service.web)"
    if _under(source, "service") and not web_side and _under(target, "jobs", *WEB_SIDE):
        return "below the web side, service/ imports neither jobs nor the web side"
    if _under(source, "jobs") and _under(target, *WEB_SIDE):
        return "jobs import no view, no service.app, no service.cli"
    if _under(source, "service.web") and _under(target, "jobs"):
        return "views enqueue through service.queues, never by importing jobs"
    return None


def forbidden_arrows(arrows: list[Arrow]) -> list[str]:
    return [f"{arrow}: {reason}" for arrow in arrows if (reason := broken_rule(arrow))]


def _graph(modules: dict[str, Path], arrows: list[Arrow]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for arrow in arrows:
        if arrow.target in modules:
            graph[arrow.source].add(arrow.target)
    return graph


def import_circles(modules: dict[str, Path], arrows: list[Arrow]) -> list[list[str]]:
    """Each group of our modules that import one another round in a circle (Tarjan's strongly connected
    components), its members sorted."""
    graph = _graph(modules, arrows)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return sorted(groups)


def cycles(modules: dict[str, Path], arrows: list[Arrow]) -> list[list[str]]:
    """One way round each circle: a shortest path from its first module back to itself."""
    graph = _graph(modules, arrows)
    return [_circle(graph, group) for group in import_circles(modules, arrows)]


def _circle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One way round the group: a shortest path from its first module back to itself, within the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    return group


# --- the rules, on this code ------------------------------------------------------------------------------


def test_no_module_imports_against_the_layers() -> None:
    _, arrows = import_graph(ROOT)
    assert forbidden_arrows(arrows) == []


def test_the_imports_of_service_and_jobs_have_no_cycle() -> None:
    modules, arrows = import_graph(ROOT)
    groups = import_circles(modules, arrows)
    ways_round = [" -> ".join(circle) for circle in cycles(modules, arrows)]
    assert groups == [], f"import circles, one way round each: {ways_round}"


def test_the_graph_sees_this_code() -> None:
    """A guard on the checker itself: it finds the modules and the arrows it is meant to judge."""
    modules, arrows = import_graph(ROOT)
    assert {"service.app", "service.domain.send_plans", "jobs.send", "service.web.webhooks.twilio_sms"} <= set(modules)
    seen = {(a.source, a.target) for a in arrows}
    assert ("jobs.send", "service.domain.send_plans") in seen
    assert ("service.app", "service.web.signup") in seen  # a lazy import, inside register_blueprints
    assert ("service.app", "flask") in seen


def test_jobs_enqueued_by_their_dotted_path_exist() -> None:
    """service.queues names its jobs by string, so no import checks them: this does."""
    from service.queues import SEND_BATCH_JOB

    module, _, name = SEND_BATCH_JOB.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


# --- the checker, on a made-up tree -----------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")


def test_the_checker_reports_a_forbidden_import_and_a_cycle(tmp_path: Path) -> None:
    _write(tmp_path, {
        "service/__init__.py": "",
        "service/domain/__init__.py": "",
        "service/domain/a.py": "from . import b\n\ndef later():\n    from flask import g\n",
        "service/domain/b.py": "from service.domain.c import thing\n",
        "service/domain/c.py": "import service.domain.a\nthing = 1\n",
        "service/domain/typed.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from jobs.send import send_batch\n"),
        "service/web/__init__.py": "",
        "service/web/view.py": "from jobs import send\nfrom service.queues import QUEUE_SEND\nimport flask\n",
        "service/queues.py": "QUEUE_SEND = 'send'\n",
        "jobs/__init__.py": "",
        "jobs/send.py": "import service.web.view as view\n",
    })
    modules, arrows = import_graph(tmp_path)
    assert sorted(forbidden_arrows(arrows)) == [
        "jobs.send -> service.web.view (line 1): jobs import no view, no service.app, no service.cli",
        "service.domain.a -> flask (line 4): Flask is for the web side only (service.app, service.cli, service.web)",
        "service.web.view -> jobs.send (line 1): views enqueue through service.queues, never by importing jobs",
    ]
    assert import_circles(modules, arrows) == [
        ["jobs.send", "service.web.view"],
        ["service.domain.a", "service.domain.b", "service.domain.c"],
    ]
    assert cycles(modules, arrows) == [
        ["jobs.send", "service.web.view", "jobs.send"],
        ["service.domain.a", "service.domain.b", "service.domain.c", "service.domain.a"],
    ]


def test_a_tree_that_keeps_the_rules_passes(tmp_path: Path) -> None:
    _write(tmp_path, {
        "service/__init__.py": "",
        "service/domain/__init__.py": "",
        "service/domain/a.py": "from service.queues import QUEUE_SEND\nfrom service import models\n",
        "service/models.py": "",
        "service/queues.py": "from rq import Queue\n",
        "service/web/__init__.py": "",
        "service/web/view.py": ("from flask import g\nfrom service.domain import a\n"
                                "from service.queues import QUEUE_SEND\n"),
        "jobs/__init__.py": "",
        "jobs/send.py": "from service.domain.a import QUEUE_SEND\n",
    })
    modules, arrows = import_graph(tmp_path)
    assert ("service.domain.a", "service.models") in {(a.source, a.target) for a in arrows}
    assert forbidden_arrows(arrows) == []
    assert import_circles(modules, arrows) == []
