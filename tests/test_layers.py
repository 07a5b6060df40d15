"""The house's layers, held by reading every module's imports (module-level and inside functions alike).

Each module has a rank; a module may import only modules of a lower rank, so imports run one way and no
cycle can form. Plain data (errors, files, plan, profile) sits at the bottom and imports no engine module;
the engine (onnxfile, graph, weights, data, analysis) never imports the widget or the CLI; analysis
methods import neither each other nor the registry. No module imports another's private (_underscored)
names. A new module must be given its place here.
"""
import ast
from pathlib import Path

import pytest

import losswidget

ROOT = Path(losswidget.__file__).parent

RANKS = {
    # plain data
    "errors": 0, "files": 1, "report": 2, "plan": 3, "profile": 4,
    # the engine
    "identity": 9, "onnxfile": 10, "graph": 11, "weights": 12, "data": 13, "demo": 13,
    "analysis.base": 20, "analysis.runner": 21, "analysis.recovery": 22,
    "analysis.approximated": 25, "analysis.magnitude": 25, "analysis.one_shot": 25, "analysis.activation": 25,
    "analysis.kernels": 18, "analysis.ranks": 19, "analysis": 30, "prune": 31,
    # presentation
    "widget": 40, "widget.folder": 40, "widget.progress": 40, "widget.store": 41, "widget.choose": 41,
    "widget.rules": 41, "widget.cards": 42, "widget.focus": 42, "widget.controls": 42, "widget.panel": 42,
    "widget.downloads": 43, "widget.planpanel": 44,
    "widget.bars": 43, "widget.table": 43, "widget.scatter": 44, "widget.curve": 44, "widget.plancurve": 44,
    "widget.charts": 45,
    "widget.app": 46,
    "serve": 49, "cli": 50, "__main__": 61, "": 60,
}


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(name: str, path: Path):
    """(imported losswidget module, imported names) for every import statement in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + (node.module.split(".") if node.module else []))
            elif node.module and node.module.split(".")[0] == "losswidget":
                target = ".".join(node.module.split(".")[1:])
            else:
                continue
            names = [a.name for a in node.names]
            # `from . import x` / `from .analysis import one_shot` may name modules
            for n in names:
                sub = f"{target}.{n}" if target else n
                if sub in RANKS:
                    yield sub, []
                    names = [m for m in names if m != n]
            yield target, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "losswidget":
                    yield ".".join(a.name.split(".")[1:]), []


def test_every_module_has_a_place():
    missing = sorted(n for n, _ in modules() if n not in RANKS)
    assert not missing, f"give these modules a rank in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("name, path", list(modules()), ids=lambda x: str(x) if isinstance(x, str) else "")
def test_imports_point_down_and_stay_public(name, path):
    rank = RANKS[name]
    for target, names in imports(name, path):
        if target == name:
            continue
        assert target in RANKS, f"{name} imports unknown module {target!r}"
        assert RANKS[target] < rank, (f"{name} (rank {rank}) imports {target or 'losswidget'} (rank "
                                      f"{RANKS[target]}): imports must point down the layers")
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{name} imports private names {private} from {target}"


def test_plain_data_imports_no_engine():
    for name in ("errors", "files", "plan", "profile"):
        path = ROOT / f"{name}.py"
        for target, _ in imports(name, path):
            assert RANKS[target] < 10, f"{name} imports {target}"
