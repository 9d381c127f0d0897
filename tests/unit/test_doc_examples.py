"""Every fenced ``python``/``bash``/``sh`` block in README.md, docs/ and examples/ says
what it is, in an HTML comment on the line before it (invisible when rendered):

- ``<!-- example: PATH -->``: a verbatim copy of PATH, a program run by a test
  (tests/e2e/test_examples.py runs every program in examples/);
- ``<!-- run: TEST_FILE -->``: executed as written by TEST_FILE, which must quote it;
- ``<!-- illustrative -->``: a fragment or a command for a real deployment, not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w+)\s*$")
_MARK = re.compile(r"^<!--\s*(example|run|illustrative)(?::\s*(\S+))?\s*-->\s*$")
CHECKED = {"python", "bash", "sh"}


def blocks(path: Path) -> list[tuple[int, str, str, str]]:
    """(line, language, marker line, code) of each checked fenced block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        end = lines.index("```", i + 1)
        if match.group(1) in CHECKED:
            marker = lines[i - 1] if i > 0 else ""
            found.append((i + 1, match.group(1), marker, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return found


ALL = [(path, *block) for path in DOCS for block in blocks(path)]


@pytest.mark.parametrize(
    ("path", "line", "language", "marker", "code"),
    ALL,
    ids=[f"{p.relative_to(ROOT)}:{b[0]}" for p, *b in [(a[0], a[1]) for a in ALL]],
)
def test_every_code_block_is_run_or_marked_illustrative(
    path: Path, line: int, language: str, marker: str, code: str
) -> None:
    where = f"{path.relative_to(ROOT)}:{line}"
    match = _MARK.match(marker)
    assert match, f"{where}: a ```{language} block needs <!-- example/run/illustrative --> above"
    kind, target = match.groups()
    if kind == "example":
        assert target, where
        assert (ROOT / target).read_text(encoding="utf-8") == code, (
            f"{where} differs from {target}: keep them identical"
        )
        assert target.startswith("examples/"), f"{where}: examples/ programs are the tested ones"
    elif kind == "run":
        assert target, where
        test_file = (ROOT / target).read_text(encoding="utf-8")
        for command in code.splitlines():
            command = command.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                assert command in test_file, f"{where}: {target} does not run {command!r}"


def test_the_readme_starts_with_its_two_commands() -> None:
    first = blocks(ROOT / "README.md")[0][3]
    assert "pip install -e '.[embedded]' && shardflow demo" in first
    assert "pip install -e '.[test]' && python -m pytest" in first
