"""lapa ablation (table + plot from eval JSON files) and the grounding probe of lapa eval."""

from __future__ import annotations

import json

import pytest
from vla_fakes import FakeEncoder, save_random_action_vla

from lapa.cli import main as lapa_main
from lapa.errors import UserError
from lapa.eval.ablation import collect, markdown, plot
from lapa.eval.grounding import grounding_probe

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _eval_file(folder, row, family, cond, successes, episodes=10):
    doc = {"command": f"lapa eval --suite {family}", "checkpoint": f"runs/{row}",
           "tasks": {family: {"successes": successes, "episodes": episodes, "success_rate": successes / episodes,
                              "ci95": [0.1, 0.9], "mean_steps": 20.0, "nearest_is_target": 0.5,
                              "failed_median_target_xy_m": 0.05, "failed_median_height_above_target_m": 0.02}}}
    (folder / f"{row}_{family}_{cond}.json").write_text(json.dumps(doc))


def test_ablation_table_has_a_row_per_recipe_and_a_cell_per_family_and_condition(tmp_path):
    evals = tmp_path / "evals"
    evals.mkdir()
    _eval_file(evals, "scratch", "reach", "seen", 1)
    _eval_file(evals, "scratch", "reach", "unseen", 0)
    _eval_file(evals, "lapa_para", "reach", "seen", 9)
    _eval_file(evals, "lapa_para", "push", "seen", 7)
    (evals / "notes.json").write_text("{}")  # not an eval file: ignored
    rows = collect(evals)
    assert set(rows) == {"scratch", "lapa_para"} and rows["lapa_para"]["push"]["seen"]["successes"] == 7
    table = markdown(rows, {"scratch": "from scratch"})
    lines = table.splitlines()
    assert lines[0].startswith("| row | recipe | reach seen | reach unseen | push seen | push unseen")
    assert "| scratch | from scratch | **10%** (1/10, 10-90) | **0%** (0/10, 10-90) | — |" in table
    assert "**90%** (9/10" in table
    out = tmp_path / "out"
    assert lapa_main(["ablation", "--evals", str(evals), "--out", str(out)]) == 0
    assert (out / "success.png").stat().st_size > 0 and json.loads((out / "results.json").read_text())
    assert plot(rows, tmp_path / "last.png", last=1) == list(rows)[-1:]  # --plot-last 1: the latest row only
    assert plot(rows, tmp_path / "all.png") == list(rows) and len(rows) == 2


def test_ablation_without_eval_files_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no <row>_<family>"):
        collect(tmp_path)


def test_grounding_probe_reports_a_fraction_and_a_spread(tmp_path):
    ckpt = save_random_action_vla(tmp_path / "ckpt", preset="tabletop", head="action", image_size=32, dim=32,
                                  depth=1, heads=2, keypoints=4, num_bins=16)
    result = grounding_probe(ckpt, scenes=2, text_encoder=FakeEncoder(), render_size=32)
    assert result["scenes"] == 2 and result["chance"] == 0.25
    assert 0.0 <= result["points_at_named_block"] <= 1.0 and result["first_move_spread_mm"] >= 0.0
