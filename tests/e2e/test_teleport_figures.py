"""docs/teleport.md shows the rollout figures that docs/teleport/rollout.json holds, as
``python -m tests.e2e.teleport_figures`` renders them."""

from __future__ import annotations

import json

import pytest

from tests.e2e import teleport_figures


def test_the_pages_rollout_figures_are_the_rendered_json():
    assert teleport_figures.main(["--check"]) == 0


def test_a_changed_figure_shows_as_a_difference(tmp_path):
    figures = json.loads(teleport_figures.FIGURES.read_text())
    figures["runs"]["agent"]["cycled"] += 1
    changed = tmp_path / "rollout.json"
    changed.write_text(json.dumps(figures))
    assert teleport_figures.main(["--check", "--figures", str(changed)]) == 1


def test_a_page_without_the_markers_is_refused_saying_so(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# no markers here\n")
    with pytest.raises(SystemExit, match="markers"):
        teleport_figures.main(["--doc", str(page)])
    assert page.read_text() == "# no markers here\n"
