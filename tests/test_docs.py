"""The documentation says what the code prints: tables pasted from a command equal that command's
output today, and every relative link in README.md and docs/ leads somewhere."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _table_after(text: str, command: str) -> list[str]:
    """The markdown table that follows the code block holding ``command``."""
    start = text.index(command)
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| "))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def test_allocator_table_is_the_output_of_the_command_beside_it(capsys):
    # issue 23: "The README's allocator table must come from a command printed beside it."
    page = (ROOT / "docs" / "allocator-and-oom.md").read_text()
    command = ".venv/bin/python scripts/allocator_table.py"
    assert f"```bash\n{command}\n```" in page
    runpy.run_path(str(ROOT / "scripts" / "allocator_table.py"), run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 7  # header, rule, seed 004's five configurations
    assert _table_after(page, command) == printed


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def test_every_relative_link_resolves():
    assert DOCS, "docs/ holds the long sections moved out of the README"
    broken = []
    for page in PAGES:
        for match in LINK.finditer(page.read_text()):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z]+://", target):
                continue
            name, _, anchor = target.partition("#")
            dest = (page.parent / name).resolve() if name else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no heading)")
    assert broken == []


def test_slug_follows_github():
    # hand-derived from GitHub's rule: "Speed (measured here, 2-core build machine)"
    assert _slug("Speed (measured here, 2-core build machine)") == "speed-measured-here-2-core-build-machine"
    assert _slug("One vocabulary: the setup flags") == "one-vocabulary-the-setup-flags"


def test_readme_is_a_newcomers_path():
    # issue 20: the README keeps what it does, the two commands and one example each, under 250 lines
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    assert "bash scripts/setup.sh && .venv/bin/vramplan estimate --gpu 24GB" in readme
    assert "\nbash scripts/test.sh\n" in readme
    for example in ("$ vramplan estimate --gpu", "$ vramplan recommend ", "$ vramplan estimate --step ",
                    "$ vramplan check ", "$ vramplan oom "):
        assert example in readme, example
    linked = {m.group(1) for m in re.finditer(r"\]\(docs/([\w.-]+\.md)", readme)}
    assert linked == {page.name for page in DOCS}  # every docs page is reachable from the README
