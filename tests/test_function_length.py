"""No function in the project's code is over 60 lines, and no method of `GPT` is over 40.

Checked: every top-level folder that is a Python package (it holds `__init__.py`: `remi`,
`model`, `pianolm`, `experiments`) and every top-level script (`train.py`, `sample.py`);
`benchmarks/` and `tests/` are exempt.

A function's length is its span in the file: from its `def` line to its last line
(`end_lineno - lineno + 1`), docstring, comments and blank lines inside included, decorators
not. A nested function counts toward its parent's length and is checked itself as well.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXEMPT = {"benchmarks", "tests"}
MAX_LINES = 60
GPT_FILE, GPT_CLASS, GPT_MAX_LINES = "model/gpt.py", "GPT", 40
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def checked_files() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))
    for folder in sorted(p for p in ROOT.iterdir() if p.is_dir()):
        if folder.name not in EXEMPT and (folder / "__init__.py").is_file():
            files += sorted(folder.rglob("*.py"))
    return files


def span(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def too_long(path: Path, limit: int, tree: ast.AST) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    return [f"{rel}:{n.lineno} {n.name} ({span(n)} lines)"
            for n in ast.walk(tree) if isinstance(n, FUNCTIONS) and span(n) > limit]


def test_the_checked_files_include_every_package_and_entry_point():
    tops = {p.relative_to(ROOT).parts[0] for p in checked_files()}
    assert {"remi", "model", "pianolm", "experiments", "train.py", "sample.py"} <= tops
    assert not tops & EXEMPT


def test_no_function_is_over_60_lines():
    over = [line for path in checked_files()
            for line in too_long(path, MAX_LINES, ast.parse(path.read_text(encoding="utf-8"), str(path)))]
    assert not over, f"functions over {MAX_LINES} lines (split them into named steps):\n" + "\n".join(over)


def test_no_method_of_gpt_is_over_40_lines():
    path = ROOT / GPT_FILE
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    gpt = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == GPT_CLASS]
    assert len(gpt) == 1, f"{GPT_FILE} should define class {GPT_CLASS} once"
    over = too_long(path, GPT_MAX_LINES, gpt[0])
    assert not over, f"methods of {GPT_CLASS} over {GPT_MAX_LINES} lines:\n" + "\n".join(over)
