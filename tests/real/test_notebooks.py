"""The notebooks run top to bottom on the embedded model (small settings: MELBO_TL_FAST=1), draw
figures that render offline as images (as `make docs` publishes them), and are stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_numbered_and_stored_without_outputs():
    assert [p.name.split("_")[0] for p in NOTEBOOKS] == [str(i) for i in range(1, len(NOTEBOOKS) + 1)]
    assert len(NOTEBOOKS) >= 5
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), (
            f"{path.name} has outputs in git"
        )


@pytest.mark.real_model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_figures_render(path):
    from tools.publish_notebooks import add_images, execute

    book, run = execute(path, fast=True, timeout_s=900)  # raises on the first cell that fails
    assert run["fast"]
    printed = "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs)
    assert printed.strip(), f"{path.name} printed nothing"
    assert add_images(book) >= 1, f"{path.name} draws no figure"
