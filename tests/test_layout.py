"""The package's layout: commands are thin, the library never imports them, and no module imports
another that imports it back (statically, function-level imports included)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "s3prl_ser"


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), str(path))
    return modules


def _imports(tree: ast.Module, modules: dict) -> set[str]:
    """The project modules ``tree`` imports anywhere (``from pkg import module`` names the module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("s3prl_ser"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules or ({node.module} & modules.keys())
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & modules.keys()
    return found


def test_commands_define_only_build_parser_and_main():
    for name, tree in _modules().items():
        # errors and logs: what every command shares (its error exit, its -q/-v and log format)
        if not name.startswith("s3prl_ser.cli.") or name in ("s3prl_ser.cli.errors", "s3prl_ser.cli.logs"):
            continue
        public = [
            node.name
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
        ]
        assert set(public) <= {"build_parser", "main"}, f"{name} defines {public}"


def test_the_library_imports_no_command_and_no_module_imports_itself_back():
    modules = _modules()
    graph = {name: _imports(tree, modules) - {name} for name, tree in modules.items()}
    upward = {name: sorted(d for d in deps if d.startswith("s3prl_ser.cli")) for name, deps in graph.items()}
    assert {name: deps for name, deps in upward.items() if deps and not name.startswith("s3prl_ser.cli")} == {}

    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join([*path[path.index(dep) :], dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
