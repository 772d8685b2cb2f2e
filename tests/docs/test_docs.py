"""The documentation site builds without warnings, and the README links every page of it."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_mkdocs_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "data-formats" / "index.html").is_file()


def test_readme_links_every_docs_page():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    pages = {next(iter(item.values())) for item in nav} - {"index.md"}
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", (REPO / "README.md").read_text()))
    assert pages <= linked, f"README does not link {sorted(pages - linked)}"
    assert {p.name for p in (REPO / "docs").glob("*.md")} == pages | {"index.md"}, "a docs page is missing from the nav"


def test_readme_is_a_short_entry_point():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README has {len(lines)} lines: move detail to docs/"
