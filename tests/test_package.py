"""The package as a whole: what importing it costs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO


def _loaded_after(statement: str) -> set[str]:
    """Top-level modules loaded by ``statement`` in a fresh interpreter."""
    code = f"{statement}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    ["import rememory", "from rememory import Memory, RecallHit, RememoryError", "import rememory.memory"],
)
def test_importing_loads_no_model_stack(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert "rememory" in loaded
    assert not loaded & {"torch", "sentence_transformers", "transformers"}


def test_package_root_exports_what_all_names() -> None:
    import rememory

    for name in rememory.__all__:
        assert getattr(rememory, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rememory.nope  # noqa: B018
