"""The README carries the documented walkthroughs verbatim; the tests run them from docs/."""

from pathlib import Path

import pytest

from .conftest import REPO


@pytest.mark.parametrize("doc", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_readme_contains_tested_docs(doc: Path) -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    assert doc.read_text("utf-8").strip() in readme, f"README.md must include {doc.name} verbatim"
