"""The package's imports flow one way: entry points -> web -> otel / finops -> reports ->
ingest -> store -> pricing -> shared leaves. A module may import from its own folder or
from a layer below it, never from above, and no chain of imports comes back to where it
started. Walked from the source (every import, including ones inside functions), so the
rule outlives the issue that set it."""

from __future__ import annotations

import ast
import unittest
from pathlib import Path

PKG = "agent_session_monitor"
ROOT = Path(__file__).resolve().parent.parent / PKG

# Rank of each folder (and of the shared leaf modules at the top of the package); a
# module may import only from its own folder or from a lower rank.
LAYERS = {
    "": 0,           # the package itself (__version__)
    "errors": 0, "config": 0, "fmt": 0, "argtypes": 0, "links": 0, "confine": 0,
    "session_keys": 0, "values": 0, "stop": 0,
    "pricing": 1,
    "store": 2,
    "ingest": 3,
    "reports": 4,
    "finops": 5,
    "otel": 5,
    "web": 6,
    "mcp_schema": 6,   # the MCP tools' schemas and argument checks, under mcp_server
    "monitor_cli": 7, "cli_commands": 7, "mcp_server": 7,
    "cli": 8,        # the query CLI's arguments and entry point, over its commands
}


def modules() -> dict[str, Path]:
    """Dotted name relative to the package ('' for the package) -> source file."""
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports (relative to the package), at any depth of code."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    base_pkg = here if is_pkg else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = base_pkg[: len(base_pkg) - (node.level - 1)] if node.level > 1 else base_pkg
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and (node.module == PKG or node.module.startswith(PKG + ".")):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:      # `from . import x` may name a module
                sub = ".".join(target + [alias.name])
                found.add(sub if sub in known else ".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PKG + "."):
                    found.add(alias.name[len(PKG) + 1:])
    return found - {name}


def layer(name: str) -> str:
    return name.split(".")[0]


class Layering(unittest.TestCase):
    def setUp(self) -> None:
        self.mods = modules()
        self.graph = {name: imports_of(name, path, set(self.mods))
                      for name, path in self.mods.items()}

    def test_every_module_has_a_layer(self):
        unplaced = sorted(n for n in self.mods if layer(n) not in LAYERS)
        self.assertEqual(unplaced, [], "add these to LAYERS (or move them into a folder)")

    def test_no_module_imports_from_a_layer_above_or_beside_it(self):
        bad = []
        for name, deps in self.graph.items():
            mine = layer(name)
            for dep in deps:
                theirs = layer(dep)
                if theirs == mine and "." in name:
                    continue                  # within one folder
                if LAYERS.get(theirs) == LAYERS.get(mine) == 0:
                    continue                  # shared leaves use each other (cycles are caught below)
                if LAYERS.get(theirs, 99) >= LAYERS.get(mine, -1) and theirs != "":
                    bad.append(f"{name or PKG} imports {dep}")
        self.assertEqual(sorted(bad), [], "imports must flow down the layers")

    def test_no_import_cycle(self):
        # Iterative DFS with colours: a grey node reached again closes a cycle.
        colour: dict[str, int] = {}
        cycles = []
        for start in self.graph:
            if colour.get(start):
                continue
            stack = [(start, iter(sorted(self.graph[start])))]
            path = [start]
            colour[start] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    colour[node] = 2
                    stack.pop()
                    path.pop()
                    continue
                if nxt not in self.graph or nxt == "":
                    continue
                if colour.get(nxt) == 1:
                    cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
                elif not colour.get(nxt):
                    colour[nxt] = 1
                    path.append(nxt)
                    stack.append((nxt, iter(sorted(self.graph[nxt]))))
        self.assertEqual(cycles, [])

    def test_the_walker_sees_an_upward_import(self):
        # The rule is only as good as the walk: a made-up store module importing the web
        # layer, and one importing a report through `from .. import`, must both be caught.
        import tempfile
        global ROOT
        saved = ROOT
        with tempfile.TemporaryDirectory() as tmp:
            ROOT = Path(tmp)
            (ROOT / "store").mkdir()
            (ROOT / "web").mkdir()
            (ROOT / "reports").mkdir()
            for d in ("store", "web", "reports"):
                (ROOT / d / "__init__.py").write_text("")
            (ROOT / "__init__.py").write_text("")
            (ROOT / "web" / "routes.py").write_text("X = 1\n")
            (ROOT / "reports" / "reader.py").write_text("Y = 1\n")
            (ROOT / "store" / "bad.py").write_text(
                "def f():\n    from ..web.routes import X\n    from ..reports import reader\n")
            try:
                mods = modules()
                deps = imports_of("store.bad", mods["store.bad"], set(mods))
            finally:
                ROOT = saved
        self.assertEqual(deps, {"web.routes", "reports.reader"})


if __name__ == "__main__":
    unittest.main()
