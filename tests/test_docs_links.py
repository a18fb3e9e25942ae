"""The README and docs/ link only to files and headings that exist, and the README stays short.

Links are checked as GitHub renders them: relative to the page, `#anchor` against the target's
headings slugged GitHub's way. Links inside code (fenced blocks, inline spans) are not links.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 220

LINK = re.compile(r"\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def without_code(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (links and code marks reduced to their
    text) lower-cased, punctuation other than `-` and `_` dropped, spaces turned into `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor, repeated headings numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for match in HEADING.finditer(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """`target: why` for every relative link on `page` that leads nowhere."""
    problems = []
    for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} has broken links"


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


def test_readme_names_every_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [nb.name for nb in sorted((ROOT / "notebooks").glob("*.ipynb")) if nb.name not in readme]
    assert missing == [], f"the README's stage table lacks {missing}"


def test_slugs_follow_github():
    assert slug("Published numbers and the abstract's aggregates") == "published-numbers-and-the-abstracts-aggregates"
    assert slug("Beauty with Qwen2.5-VL-7B on one GPU") == "beauty-with-qwen25-vl-7b-on-one-gpu"
    assert slug("Parameters (-p)") == "parameters--p"
    assert slug("`moda-memory`: what [MoDA](x.md) keeps") == "moda-memory-what-moda-keeps"
    assert slug("Stages, notebooks, outputs") == "stages-notebooks-outputs"


def test_checker_finds_what_is_broken(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "target.md").write_text("# Title\n\n## A section\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](target.md) [ok](target.md#a-section) [ok](target.md#a-section-1) [ok](#here)\n"
        "[gone](missing.md) [no heading](target.md#nowhere) [no self](#nowhere)\n"
        "[web](https://example.org/x) `[in code](missing2.md)`\n"
        "```\n[in a block](missing3.md)\n```\n"
        "## Here\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no file missing.md",
        "target.md#nowhere: no heading #nowhere in target.md",
        "#nowhere: no heading #nowhere in page.md",
    ]
