"""The user docs hold together: every relative link in README.md, docs/ and the published notebooks reaches a file, and
every #anchor a heading of it (GitHub's rule for heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "notebooks").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)  # code blocks: no headings, no links
LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"|<a href=\"([^\"]+)\"")


def slug(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [next(g for g in m.groups() if g) for m in LINK.finditer(text)]


def test_slug_follows_github():
    assert slug("The demo: discovery at scale, then the shortlist (`make demo`)") == (
        "the-demo-discovery-at-scale-then-the-shortlist-make-demo"
    )
    assert slug("Checking it yourself: `make test-llama-cpp`") == "checking-it-yourself-make-test-llama-cpp"


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z]+:", target) or target.startswith("<"):
                continue  # http(s), mailto: not checked offline
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_the_readme_keeps_the_two_commands_users_start_with():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
