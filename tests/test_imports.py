"""The layout's rules, read from every module's imports (module level and inside functions alike).

- no import cycle between the project's own modules;
- `remi` never imports torch, lightning, `model` or `pianolm` (it knows MIDI and tokens only);
- `model` never imports `remi`, mido or `pianolm` (it knows tensors and ids only);
- no library (`remi`, `model`, `pianolm`) imports an entry point (`train.py`, `sample.py`) or
  `experiments/`, and nothing but the tests imports an entry point;
- mido is imported by `remi/midi_io.py` alone;
- starlette and uvicorn (the optional `serve` extra) are imported by `pianolm/serve.py` alone;
- inside `remi`, the tokenizer core (its top-level modules) never imports `remi.corpus` (files and
  corpora -> shards) or `remi.media` (audio, pictures), and those two never import each other: both
  stand on the core. `remi/__main__.py` (the command line, which nothing imports) is exempt, as are
  the shims that keep old module names (`remi.prepare`, ...) working; nothing in the project,
  tests included, imports a shim, and a shim holds nothing but re-exports of its new home.

Only `if TYPE_CHECKING:` blocks are skipped: they never run.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("remi", "model", "pianolm", "experiments")
SCRIPTS = ("train.py", "sample.py")
ENTRY_POINTS = ("train", "sample")
MIDO_HOME = "remi.midi_io"
WEB_HOME, WEB_PACKAGES = "pianolm.serve", {"starlette", "uvicorn"}  # the optional `serve` extra
# remi's layers: the core is every module of remi/ itself; these two stand on it, side by side.
REMI_LAYERS = ("remi.corpus", "remi.media")
REMI_CLI = "remi.__main__"  # an entry point: may reach every layer (key-accuracy reads the bundled corpus)
# old module -> its new homes: kept for `python -m remi.prepare` and users' imports, re-exports only
SHIMS = {
    "remi.datasets": ("remi.corpus.datasets",),
    "remi.bundled": ("remi.corpus.bundled",),
    "remi.prepare": ("remi.corpus.prepare",),
    "remi.audio": ("remi.media.audio",),
    "remi.pianoroll": ("remi.media.pianoroll",),
    "remi.render": ("remi.bars", "remi.media.render"),
}
FORBIDDEN = {  # importer's top package -> top-level names it must not import
    "remi": {"torch", "lightning", "model", "pianolm", "experiments", *ENTRY_POINTS},
    "model": {"remi", "mido", "pianolm", "experiments", *ENTRY_POINTS},
    "pianolm": {"experiments", *ENTRY_POINTS},
    "experiments": {*ENTRY_POINTS},
    "benchmarks": {*ENTRY_POINTS},
    "train": {"experiments", "sample"},
    "sample": {"experiments", "train"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files(root: Path = ROOT) -> list[Path]:
    files = [p for pkg in (*PACKAGES, "benchmarks") for p in sorted((root / pkg).rglob("*.py"))]
    return files + [root / s for s in SCRIPTS if (root / s).is_file()]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imported_names(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(dotted module name, line) of every import in `path`; relative imports made absolute, and
    `from pkg import name` read as `pkg.name` when that is a module file of the tree."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".") if package else []
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for a in child.names:
                    sub = f"{base}.{a.name}" if base else a.name
                    is_module = (root / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                        root / Path(*sub.split(".")) / "__init__.py").is_file()
                    found.append((sub if is_module else base, child.lineno))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """The project's own modules -> the project modules each imports."""
    files = project_files(root)
    names = {module_name(p, root) for p in files}
    graph: dict[str, set[str]] = {}
    for p in files:
        me = module_name(p, root)
        graph[me] = set()
        for name, _ in imported_names(p, root):
            # `import remi.score` names remi.score; `import remi` names the package
            target = next((cut for cut in _prefixes(name) if cut in names), None)
            if target is not None and target != me:
                graph[me].add(target)
    return graph


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def remi_layer(name: str) -> str | None:
    """'remi.corpus' / 'remi.media' for their modules, 'core' for the rest of remi, None outside remi."""
    if name != "remi" and not name.startswith("remi."):
        return None
    return next((layer for layer in REMI_LAYERS if name == layer or name.startswith(layer + ".")), "core")


def violations(root: Path = ROOT, shims: set[str] = frozenset(SHIMS)) -> list[str]:
    """Every forbidden arrow, as 'file:line imports name (rule)'."""
    bad = []
    for p in project_files(root):
        me = module_name(p, root)
        top = me.split(".")[0]
        for name, line in imported_names(p, root):
            head = name.split(".")[0]
            where = f"{p.relative_to(root)}:{line} imports {name}"
            if head in FORBIDDEN.get(top, ()):
                bad.append(f"{where} ({top} must not import {head})")
            mine, theirs = remi_layer(me), remi_layer(name)
            if mine and theirs not in (None, "core", mine) and me != REMI_CLI and me not in shims:
                bad.append(f"{where} ({'the core' if mine == 'core' else mine} must not import {theirs})")
            if head == "mido" and me != MIDO_HOME:
                bad.append(f"{where} (only {MIDO_HOME} imports mido)")
            if head in WEB_PACKAGES and me != WEB_HOME:
                bad.append(f"{where} (only {WEB_HOME} imports the serve extra's {head})")
    return bad


def shim_imports(root: Path = ROOT, shims: set[str] = frozenset(SHIMS)) -> list[str]:
    """'file:line imports shim' for every import of a shim in the project and its tests."""
    files = [*project_files(root), *sorted((root / "tests").rglob("*.py"))]
    return [f"{p.relative_to(root)}:{line} imports {name}" for p in files for name, line in imported_names(p, root)
            if any(cut in shims for cut in _prefixes(name)) and module_name(p, root) not in shims]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_forbidden_imports():
    found = violations()
    assert not found, "forbidden imports:\n" + "\n".join(found)


def test_nothing_in_the_project_imports_a_shim():
    """The old names are for users; the project, tests included, imports the new homes."""
    found = shim_imports()
    assert not found, "imports through a shim (import the new home):\n" + "\n".join(found)


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_a_shim_only_re_exports_its_new_home(old):
    """Every old name still imports, as the very object of its new home, and the shim has no code
    of its own (docstring, imports from its homes, `__all__`, and the command line's `main` call)."""
    homes = SHIMS[old]
    path = ROOT / Path(*old.split(".")).with_suffix(".py")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            assert f"remi.{node.module}" in homes and node.level == 1, f"{path.name}: imports {node.module}"
        elif isinstance(node, ast.Assign):
            assert [t.id for t in node.targets] == ["__all__"], f"{path.name}:{node.lineno} defines something"
        elif isinstance(node, ast.If):
            assert ast.unparse(node) == "if __name__ == '__main__':\n    raise SystemExit(main())"
        else:
            assert isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant), f"{path.name}:{node.lineno}"
    shim = importlib.import_module(old)
    new = [importlib.import_module(h) for h in homes]
    assert shim.__all__ and len(set(shim.__all__)) == len(shim.__all__)
    for name in shim.__all__:
        assert any(getattr(m, name, None) is getattr(shim, name) for m in new), f"{old}.{name}"


def test_remis_layers_are_real_packages():
    """REMI_LAYERS names packages that hold modules (a stale name would make the layer rule check
    nothing), and `import remi` loads the core alone."""
    graph = import_graph()
    for layer in REMI_LAYERS:
        assert layer in graph and any(m.startswith(layer + ".") for m in graph)
    assert graph["remi"] and all(remi_layer(m) == "core" for m in graph["remi"])


# ---- the checker itself catches what it must -------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path


def test_checker_finds_a_cycle_hidden_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "remi/__init__.py": "",
        "remi/a.py": "from .b import x\n",
        "remi/b.py": "def f():\n    from . import a\n",
        "remi/c.py": "from remi import a\n",
    })
    assert cycles(import_graph(root)) == [["remi.a", "remi.b"]]


def test_checker_finds_forbidden_arrows_but_skips_type_checking(tmp_path):
    root = _tree(tmp_path, {
        "remi/__init__.py": "",
        "remi/x.py": "import torch\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import model\n",
        "remi/y.py": "def f():\n    import mido\n",
        "model/__init__.py": "",
        "model/z.py": "from remi.x import q\n",
        "pianolm/__init__.py": "",
        "pianolm/w.py": "from sample import load\n",
        "pianolm/serve.py": "def app():\n    from starlette.routing import Route\n",
        "pianolm/v.py": "def run():\n    import uvicorn\n",
    })
    found = violations(root)
    assert sorted(v.split(" (")[0] for v in found) == [
        "model/z.py:1 imports remi.x",
        "pianolm/v.py:2 imports uvicorn",
        "pianolm/w.py:1 imports sample",
        "remi/x.py:1 imports torch",
        "remi/y.py:2 imports mido",
    ]


def test_checker_finds_arrows_between_remis_layers(tmp_path):
    root = _tree(tmp_path, {
        "remi/__init__.py": "",
        "remi/score.py": "",
        "remi/tokenizer.py": "from .score import Score\ndef f():\n    from .media import render\n",
        "remi/shards.py": "import remi.corpus.prepare\n",
        "remi/__main__.py": "from .corpus.prepare import main\n",  # the command line may
        "remi/old.py": "from .corpus.prepare import main\n",  # a shim may
        "remi/corpus/__init__.py": "",
        "remi/corpus/prepare.py": "from .. import shards\nfrom ..media.audio import x\nfrom ..tokenizer import T\n",
        "remi/media/__init__.py": "",
        "remi/media/render.py": "from ..score import Score\nfrom .audio import y\nfrom remi.corpus import prepare\n",
        "remi/media/audio.py": "",
        "pianolm/__init__.py": "",
        "pianolm/w.py": "from remi.old import main\nimport remi.corpus.prepare\n",
    })
    found = violations(root, shims={"remi.old"})
    assert sorted(v.split(" (")[0] for v in found) == [
        "remi/corpus/prepare.py:2 imports remi.media.audio",
        "remi/media/render.py:3 imports remi.corpus.prepare",
        "remi/shards.py:1 imports remi.corpus.prepare",
        "remi/tokenizer.py:3 imports remi.media.render",
    ]
    assert shim_imports(root, shims={"remi.old"}) == ["pianolm/w.py:1 imports remi.old"]


@pytest.mark.parametrize("module", ["remi.keys", "remi.metrics", "remi.score"])
def test_leaves_import_only_score_and_keys(module):
    """keys and metrics are pure numpy over Score: nothing of corpus preparation or MIDI below them."""
    assert import_graph()[module] <= {"remi.score", "remi.keys"}


def test_no_module_imports_an_experiment_driver_and_nothing_edits_sys_path():
    """experiments/ablate.py, compare.py and temperature_sweep.py are drivers (run them with
    `python -m experiments.<name>` or `python experiments/<name>.py`): what they share lives in
    experiments/common.py, so no module imports a driver; and no module of experiments/ edits
    sys.path (the package is installed with the project)."""
    drivers = {"experiments.ablate", "experiments.compare", "experiments.temperature_sweep"}
    graph = import_graph()
    offenders = sorted(f"{me} -> {d}" for me, deps in graph.items() if not me.startswith("tests")
                       for d in deps & drivers)
    assert offenders == []
    edits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "experiments").rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "sys.path" in line]
    assert edits == []
