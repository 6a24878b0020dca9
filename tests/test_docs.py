"""The project's documentation lives in the repository.

No file points at documents kept outside it (the contract, the design notes, the style items
and the benchmark targets are pages under ``docs/`` and ``benchmarks/README.md``), and every
relative link of the README and the ``docs/`` pages lands on a file and, where it names one,
on a heading of that file.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _outside_references() -> re.Pattern[str]:
    """What names a document kept outside the repository: its file name, or a numbered part
    of it (a section, a decision, an item). Assembled from pieces, so that this file, which
    is checked like any other, does not contain the names it looks for."""
    numbered = {"SP" + "EC": "section", "DES" + "IGN": "decision", "STY" + "LE": "item"}
    names = [*numbered, "BENCH" + "MARKS"]
    patterns = [rf"\b{name}\.md\b" for name in names]
    # words may be split over two lines, of a comment too
    patterns += [rf"\b{name}[\s#]+{part}s?\b" for name, part in numbered.items()]
    patterns += [rf"\b{name}[ \t]+\d" for name in numbered]  # the short form: "... 3"
    patterns += [r"(?i:\bsha" + r"red[\s#]+docs\b)", r"\.\./sha" + r"red\b"]
    return re.compile("|".join(patterns))


OUTSIDE = _outside_references()


def _repository_files() -> list[str]:
    """The files git tracks, and the new ones it would track (not ignored), that exist."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout, or no git here ({err})")
    names = sorted({n for n in out.decode().split("\0") if n})
    return [n for n in names if (ROOT / n).is_file()]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def test_no_file_points_at_documents_outside_the_repository():
    found = []
    for name in _repository_files():
        text = _text(ROOT / name)
        if text is None:
            continue
        lines = text.split("\n")
        for match in OUTSIDE.finditer(text):
            number = text.count("\n", 0, match.start()) + 1
            found.append(f"{name}:{number}: {lines[number - 1].strip()}")
    assert not found, (
        "point these at the pages in docs/ (job-files.md, cli.md, run-directory.md, "
        "design.md) or benchmarks/README.md instead:\n" + "\n".join(dict.fromkeys(found))
    )


def test_the_patterns_catch_what_they_are_for():
    for text in (
        "(SP" + "EC section 6)",
        "SP" + "EC sections 1, 2 and 6",
        "(DES" + "IGN decision 3)",
        "(DES" + "IGN 3)",
        "(DES" + "IGN\n# decision 2)",
        "STY" + "LE item 9",
        "see BENCH" + "MARKS.md",
        "kept with the project's sha" + "red docs",
        "../sha" + "red/docs/SP" + "EC.md",
    ):
        assert OUTSIDE.search(text), text
    for text in ("_SPEC_KEYS", "LOCAL_SPEC = 1", "FSSPEC_", "docs/design.md#layers"):
        assert not OUTSIDE.search(text), text


# --------------------------------------------------------------------------- links

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)


def _without_code(text: str) -> str:
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (links and code marks dropped), lower
    case, without punctuation but hyphens and underscores, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (a repeated one gets ``-1``, ``-2``...)."""
    seen: Counter[str] = Counter()
    out = set()
    for heading in _HEADING.findall(_without_code(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        out.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return out


def links(path: Path) -> list[str]:
    """The targets of the markdown links of a file, outside code."""
    text = _CODE_SPAN.sub("", _without_code(path.read_text(encoding="utf-8")))
    return _LINK.findall(text)


def _pages() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]


def test_slugs_are_githubs():
    assert slug("Output and `append_row_to`") == "output-and-append_row_to"
    assert slug("Where the time goes (issue 11)") == "where-the-time-goes-issue-11"
    assert slug("A v1 `ParallelRunConfig`") == "a-v1-parallelrunconfig"
    assert slug("Exactly once: claims and the ledger") == "exactly-once-claims-and-the-ledger"
    assert slug("See [the docs](x.md) here") == "see-the-docs-here"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands_on_a_file_and_a_heading(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {os.path.relpath(dest, ROOT)}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading of {dest.name} makes the anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(broken)


def test_every_docs_page_and_anchor_a_file_names_exists():
    """Code comments cite the pages as ``docs/job-files.md#failure-handling``."""
    broken = []
    for name in _repository_files():
        text = _text(ROOT / name)
        if text is None:
            continue
        for match in re.finditer(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?", text):
            page = ROOT / "docs" / match[1]
            where = f"{name}:{text.count(chr(10), 0, match.start()) + 1}: {match[0]}"
            if not page.is_file():
                broken.append(f"{where}: no such page")
            elif match[2] and match[2] not in anchors(page):
                broken.append(f"{where}: no heading of {match[1]} makes that anchor")
    assert not broken, "\n".join(broken)


def test_the_docs_pages_are_listed_in_the_readme():
    listed = set(links(ROOT / "README.md"))
    pages = sorted((ROOT / "docs").glob("*.md"))
    missing = [p.name for p in pages if f"docs/{p.name}" not in listed]
    assert not missing, f"add these to README.md's Documentation list: {missing}"


def test_the_command_line_page_lists_every_environment_variable():
    settings = pytest.importorskip("daskprs.settings")
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [name for name in settings.VARIABLES if f"`{name}`" not in page]
    assert not missing, f"docs/cli.md, Environment variables: add {missing}"


def test_the_run_folders_the_readme_shows_are_ignored_by_git():
    """A user who runs the README's commands in a clone leaves no untracked run folder."""
    readme = (ROOT / "README.md").read_text()
    folders = [*sorted(set(re.findall(r"--run-dir ([\w./-]+)", readme))), "daskprs-runs/x"]
    assert "runs/today" in folders
    for folder in folders:
        ignored = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "-q", folder], check=False
        )
        assert ignored.returncode == 0, f"{folder} is not ignored by .gitignore"
