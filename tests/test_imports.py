"""Import directions: commands -> train -> eval/serve -> inference -> checkpoint -> model/data -> configs.

An AST walk over src/pirecon collects every import, at module level and inside functions, and
fails on an edge that points up (or sideways between packages of one layer), naming the file, the
line and the edge. Imports inside functions are kept for start-up time only: each carries a
`# lazy: <reason>` comment. Only command modules (those `pirecon <command>` runs) parse flags.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from pirecon.cli import COMMANDS

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "pirecon"

# Layer of every package / top-level module. A module may import its own package and anything in a
# lower layer; layer 0 (the bottom utilities) may also import each other.
LAYERS = {
    "errors": 0, "batch": 0, "configs": 0, "hubcache": 0,
    "model": 1, "data": 1,
    "checkpoint": 2, "sim": 2,
    "inference": 3,
    "eval": 4, "serve": 4,
    "train": 5,  # evaluates closed-loop during training (eval.during_training)
    "demo": 6, "smoke": 6, "export": 6, "push": 6, "presets": 6, "recon_viz": 6, "cli": 6,
    "recon_ablation": 7,  # benchmarks/recon_ablation.py's sweep: runs the demo's training and recon-viz
    "__main__": 7,
}
FACADE = "pirecon"  # pirecon/__init__.py: the public API, imported by users, never by pirecon itself
FLAG_PARSERS = ("parse_flags", "parse_command")
COMMAND_MODULES = {module for module, _ in COMMANDS.values()}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def imported_modules(node: ast.AST, importer: str) -> list[str]:
    """The pirecon modules an Import / ImportFrom node reads (`from pirecon.x import y`: pirecon.x.y
    when y is a module, else pirecon.x)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "pirecon"]
    assert not node.level, f"{importer}: relative import; pirecon imports by absolute name"
    target = node.module or ""
    if target.split(".")[0] != "pirecon":
        return []
    out = []
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        out.append(candidate if is_module(candidate) else target)
    return out


def is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[int, str, bool, ast.AST]]:
    """(line, statement text, inside a function, node) for every import in `path`."""
    lines = path.read_text().splitlines()
    found = []

    def walk(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                text = "\n".join(lines[child.lineno - 1:child.end_lineno])
                found.append((child.lineno, text, local, child))
            walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(path.read_text()), False)
    return found


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def forbidden_edges() -> list[str]:
    problems = []
    for path in source_files():
        importer = module_name(path)
        where = path.relative_to(SRC.parent)
        if importer == FACADE:
            continue
        mine = group(importer)
        for line, _, _, node in imports(path):
            for target in imported_modules(node, importer):
                theirs = group(target)
                if target == FACADE:
                    problems.append(f"{where}:{line}: {importer} -> {FACADE} (import the defining module, not the "
                                    f"public facade)")
                    continue
                if mine not in LAYERS or theirs not in LAYERS:
                    unknown = mine if mine not in LAYERS else theirs
                    problems.append(f"{where}:{line}: {importer} -> {target} ({unknown!r} has no layer in "
                                    f"tests/test_imports.py LAYERS: place it)")
                    continue
                ours, their_layer = LAYERS[mine], LAYERS[theirs]
                if mine == theirs or their_layer < ours or (ours == 0 and their_layer == 0):
                    continue
                problems.append(f"{where}:{line}: {importer} -> {target} ({mine} is layer {ours}, {theirs} layer "
                                f"{their_layer}: imports point down only)")
    return problems


def test_imports_point_down():
    problems = forbidden_edges()
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def test_function_local_imports_say_why():
    problems = []
    for path in source_files():
        for line, text, local, _ in imports(path):
            if local and "# lazy: " not in text:
                problems.append(f"{path.relative_to(SRC.parent)}:{line}: {text.strip().splitlines()[0]}")
    assert not problems, ("imports inside functions without a `# lazy: <reason>` comment (move them to the top of "
                          "the module, or say what start-up time they save):\n" + "\n".join(problems))


def test_only_commands_parse_flags():
    problems = []
    for path in source_files():
        importer = module_name(path)
        if importer in COMMAND_MODULES or importer == "pirecon.configs.parse":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name in FLAG_PARSERS:
                    problems.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {importer} calls {name} but is "
                                    f"not a command module (pirecon.cli.COMMANDS)")
    assert not problems, "\n".join(problems)


def test_the_walk_sees_every_import(tmp_path, monkeypatch):
    """The walk itself, on a made-up tree: module-level and function-local imports are found, told
    apart, and resolved to modules, and an upward edge is reported with its file and line."""
    fake = tmp_path / "src" / "pirecon"
    for name in ("__init__.py", "model/__init__.py", "checkpoint/__init__.py", "checkpoint/made_up.py",
                 "train/__init__.py", "train/loop.py"):
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text("")
    (fake / "model" / "bad.py").write_text(
        "from pirecon.configs import policy\n"
        "def f():\n"
        "    from pirecon.checkpoint import made_up, a_constant\n"
        "    import pirecon.train.loop  # lazy: a reason\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "src")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = imports(fake / "model" / "bad.py")
    assert [(line, local) for line, _, local, _ in found] == [(1, False), (3, True), (4, True)]
    assert imported_modules(found[1][3], "pirecon.model.bad") == ["pirecon.checkpoint.made_up", "pirecon.checkpoint"]
    assert imported_modules(found[2][3], "pirecon.model.bad") == ["pirecon.train.loop"]
    problems = forbidden_edges()
    assert len(problems) == 3 and all(p.startswith("src/pirecon/model/bad.py:") for p in problems)
    assert "pirecon.model.bad -> pirecon.train.loop (model is layer 1, train layer 5" in problems[-1]
