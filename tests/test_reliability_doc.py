"""docs/reliability.md is the table of every `@pytest.mark.reliability(tried, does)` test: what a
user or a stranger's cache tried, and what liquidgen does. It is rendered from the tests, so a
row exists only where a test checks it. Regenerate with `python tests/test_reliability_doc.py`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
DOC = TESTS.parent / "docs" / "reliability.md"

HEADER = """# Reliability: what was tried, and what liquidgen does

Every row is a test (`@pytest.mark.reliability` in `tests/`) that feeds liquidgen the bad input
and checks the outcome; `make test` runs them all, and `tests/test_reliability_doc.py` fails
when this table and the tests disagree. Regenerate it with `python tests/test_reliability_doc.py`.

Common to every refusal: one line on stderr, a non-zero exit, no traceback, and nothing the
user had is overwritten. A command-line value is refused before anything is written; a cache
is refused before any of its data is used.

| what was tried | what liquidgen does | test |
|---|---|---|
"""


def _marks(tree: ast.Module) -> list[tuple[str, str, str]]:
    rows = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test"):
            continue
        for deco in node.decorator_list:
            if not isinstance(deco, ast.Call):
                continue
            name = ast.unparse(deco.func)
            if name in ("reliability", "pytest.mark.reliability") and len(deco.args) == 2:
                tried, does = (ast.literal_eval(a) for a in deco.args)
                rows.append((tried, does, node.name))
    return rows


def render() -> str:
    lines = []
    for path in sorted(TESTS.glob("test_*.py")):
        for tried, does, test in _marks(ast.parse(path.read_text())):
            lines.append(f"| {tried} | {does} | `{path.name}::{test}` |")
    return HEADER + "\n".join(lines) + "\n"


def test_docs_reliability_md_lists_every_reliability_test():
    assert DOC.exists(), f"{DOC} is missing: run python tests/test_reliability_doc.py"
    assert DOC.read_text() == render(), "docs/reliability.md is stale: run python tests/test_reliability_doc.py"
    assert render().count("\n| ") >= 20  # the table is the tests' own, and there are many


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC} ({render().count(chr(10) + '| ') - 1} rows)", file=sys.stderr)
