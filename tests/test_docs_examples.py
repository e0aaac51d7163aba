"""The Python examples in the documentation run, exactly as written.

Every fenced ``python`` block of each page in ``DOCUMENTED`` is executed on
its own, in a fresh namespace, from the repository root (so a block may
read ``deploy/policy.toml``). A block that raises, or an ``assert`` in it
that fails, fails its test: the docs cannot drift from the code unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = ("docs/integrators.md",)
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(page: str) -> list[tuple[int, str]]:
    """``(line, source)`` of each fenced python block; ``line`` is where its code starts."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in _BLOCK.finditer(text)
    ]


EXAMPLES = [
    pytest.param(page, line, source, id=f"{page}:{line}")
    for page in DOCUMENTED
    for line, source in python_blocks(page)
]


def test_pages_have_examples() -> None:
    for page in DOCUMENTED:
        assert python_blocks(page), f"{page} has no python examples (or the pattern broke)"


@pytest.mark.parametrize(("page", "line", "source"), EXAMPLES)
def test_example_runs(page: str, line: int, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    # Pad with blank lines so a traceback points at the line in the Markdown file.
    code = compile("\n" * (line - 1) + source, str(ROOT / page), "exec")
    exec(code, {"__name__": "__main__"})  # as if run as a script
