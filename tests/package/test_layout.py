"""The package's layout (docs/design.md section 2): imports go one way, apps → library → compiled
modules, with no circle; every cell of the registry resolves to its classes and functions."""

import ast
from pathlib import Path

import pytest

import rnnkern
from rnnkern import cells

PACKAGE = Path(rnnkern.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path):
    """The rnnkern modules that a file imports anywhere (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "rnnkern")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "rnnkern":
                continue
            found.add(module)
            # `from . import functional`: the names may be modules themselves
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def _library_files():
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if "apps" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"]


def test_the_library_never_imports_the_commands():
    offenders = {_module_name(p): sorted(m for m in _imports(p)
                                         if m == "rnnkern.apps" or m.startswith("rnnkern.apps."))
                 for p in _library_files()}
    assert not {k: v for k, v in offenders.items() if v}, offenders
    assert len(_library_files()) > 8  # the walk found the library


def test_library_modules_import_each_other_in_one_direction():
    modules = {_module_name(p): p for p in _library_files()}
    graph = {name: {m for m in _imports(path) if m in modules and m != name
                    and m != "rnnkern"}
             for name, path in modules.items()}
    assert "rnnkern.modules" in graph["rnnkern.diagnostics"]  # the walk sees imports

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, graph) if c]
    assert not cycles, cycles


def test_the_commands_are_one_module_each_under_a_dispatcher():
    from rnnkern import apps

    for command in apps.COMMANDS:
        assert callable(command.add_parser) and callable(command.run)
        assert callable(command.check_arguments)
    parser = apps.build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert names == {"bench", "vanish", "train", "check"}


def test_every_cell_of_the_registry_resolves(cell):
    import torch

    cell = cells.get(cell)
    assert any(c is cell for c in cells.CELLS)
    module = cell.module_type()
    assert issubclass(module, torch.nn.Module) and module.__name__ == cell.title
    assert getattr(rnnkern, cell.title) is module
    # a drop-in subclasses its torch class (a cell that is none may, for its constructor)
    assert issubclass(module, cell.torch_type()) or not cell.drop_in
    assert callable(cell.reference_loop())
    assert cell.gate_count == len(cell.gates) >= 1 and cell.states[0] == "h"
    assert cells.get(cell.name) is cell


def test_an_unknown_cell_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match="cell must be one of 'rnn', 'lstm', 'gru'.*got 'elman'"):
        cells.get("elman")
