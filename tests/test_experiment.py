"""The comparison experiment: table, plot and the bar on fake numbers; the whole pipeline on a minuscule config."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from vla_fakes import FakeEncoder

from lapa.errors import UserError
from lapa.eval.closed_loop import summarize
from lapa.experiment import (
    CONDITIONS,
    METHODS,
    STAGES,
    Experiment,
    ExperimentConfig,
    gap_recovered,
    parse_overrides,
    render_markdown,
    summarize_methods,
    write_report,
)


def _fake_eval(successes: dict[str, int], n: int = 10) -> dict:
    from lapa.eval.closed_loop import EpisodeOutcome

    outcomes = [EpisodeOutcome(f, i, f, "x", i < k, 5) for f, k in successes.items() for i in range(n)]
    return {"suite": "default", "episodes_per_task": n, "seed_base": 1, "execute": "first",
            **summarize(outcomes, tuple(successes)), "episodes": [asdict(o) for o in outcomes]}


def _fake_evals(rates: dict[str, tuple[int, int]]) -> dict:
    return {m: {c: _fake_eval({"reach": rates[m][i], "push": rates[m][i] // 2}) for i, c in enumerate(CONDITIONS)}
            for m in METHODS}


def test_gap_recovered():
    assert gap_recovered(0.2, 0.6, 0.7) == pytest.approx(0.8)
    assert gap_recovered(0.5, 0.6, 0.5) is None


def test_bar_and_report_on_fake_numbers(tmp_path):
    evals = _fake_evals({"scratch": (2, 2), "lapa": (8, 6), "actionvla": (9, 7), "vpt": (5, 4)})
    doc = {"command": "lapa experiment run --out x", **summarize_methods(evals), "timings_s": {"record": 12.0}}
    bar = doc["bar"]
    assert bar["gap_recovered_seen"] == pytest.approx((12 - 3) / (13 - 3))  # reach k + push k // 2 of 20
    assert bar["actionvla_over_scratch_seen"] == pytest.approx(0.5) and bar["actionvla_beats_scratch_seen"]
    lo, hi = bar["gap_recovered_seen_ci95"]
    assert lo < bar["gap_recovered_seen"] < hi and hi - lo > 0.05  # 20 episodes a method: a wide interval
    assert bar["lapa_beats_vpt_unseen"] and bar["lapa_beats_scratch_unseen"] and bar["met"]
    paths = write_report(doc, tmp_path / "results")
    assert [p.name for p in paths] == ["results.md", "results.json", "success.png"]
    md = (tmp_path / "results" / "results.md").read_text()
    for m in METHODS:
        assert f"| `{m}` |" in md
    assert "90%" in md and "Bar met overall: **yes**" in md and "record 12" in md and "bootstrap 95%" in md
    assert json.loads((tmp_path / "results" / "results.json").read_text())["methods"]["lapa"]["seen"]["overall"][
        "successes"] == 12
    assert (tmp_path / "results" / "success.png").stat().st_size > 1000

    worse = summarize_methods(_fake_evals({"scratch": (2, 2), "lapa": (3, 2), "actionvla": (9, 7), "vpt": (5, 4)}))
    assert not worse["bar"]["met"] and not worse["bar"]["lapa_beats_vpt_unseen"]
    assert "not met" in render_markdown(worse)
    close = summarize_methods(_fake_evals({"scratch": (6, 2), "lapa": (8, 6), "actionvla": (9, 7), "vpt": (5, 4)}))
    assert not close["bar"]["actionvla_beats_scratch_seen"] and not close["bar"]["met"]  # a gap of 20 points


def test_overrides_are_typed_and_checked():
    got = parse_overrides(["pretrain_steps=10", "lr=0.001", "augment=shift", "codebook_size=16", "suite=reach",
                           "record_image_size=128", "until_done=true", "state_history=3,6,12"])
    assert got == {"pretrain_steps": 10, "lr": 0.001, "augment": "shift", "codebook_size": 16, "suite": "reach",
                   "record_image_size": 128, "until_done": True, "state_history": "3,6,12"}
    assert ExperimentConfig.preset("recipe", **got).lags == (3, 6, 12)
    with pytest.raises(UserError, match="augment"):
        ExperimentConfig.preset("default", augment="true")
    with pytest.raises(UserError, match="state_history"):
        _ = ExperimentConfig.preset("default", state_history="6,3").lags
    assert parse_overrides(["precision=bf16"]) == {"precision": "bf16"}
    assert Experiment(ExperimentConfig.preset("smoke", precision="bf16"), "run", "results").env.precision == "bf16"
    with pytest.raises(UserError, match="precision"):
        ExperimentConfig.preset("default", precision="fp8")
    with pytest.raises(UserError):
        parse_overrides(["nope=1"])
    with pytest.raises(UserError):
        ExperimentConfig.preset("huge")


def test_stages_need_their_inputs(tmp_path):
    exp = Experiment(ExperimentConfig.preset("smoke"), tmp_path / "run", tmp_path / "results")
    with pytest.raises(UserError, match="record"):
        exp.run(["laq"])
    with pytest.raises(UserError, match="unknown stage"):
        exp.run(["bogus"])


@pytest.mark.slow
def test_minuscule_experiment_runs_every_stage_then_skips_them(tmp_path, capsys):
    run, results = tmp_path / "run", tmp_path / "results"
    exp = Experiment(ExperimentConfig.preset("smoke"), run, results, encoder=FakeEncoder(), command="test")
    ran = exp.run()
    assert ran == {s: "ran" for s in STAGES}
    out = capsys.readouterr().out
    assert all(f"[{s}] took" in out for s in STAGES)
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == set(STAGES) - {"report"}
    doc = json.loads((results / "results.json").read_text())
    assert set(doc["methods"]) == set(METHODS) and doc["command"] == "test"
    assert (results / "success.png").is_file() and (results / "results.md").is_file()

    (run / "eval" / "vpt_unseen.json").unlink()
    again = Experiment(ExperimentConfig.preset("smoke"), run, results, encoder=FakeEncoder(), command="test").run()
    assert [s for s, how in again.items() if how == "ran"] == ["eval", "report"]
    assert (run / "eval" / "vpt_unseen.json").is_file()


@pytest.mark.slow
def test_the_recipe_options_run_through_every_stage(tmp_path):
    """The `recipe` preset's options (expert data, tabletop model, augmentations, state history,
    ensembling) on the smoke preset's sizes."""
    recipe = ExperimentConfig.preset("recipe")
    options = {k: getattr(recipe, k) for k in (
        "expert_noise_m", "dart_noise_m", "until_done", "settle_steps", "start_jitter_m", "vla_preset", "patch_size",
        "num_bins", "augment", "augment_pretraining", "paraphrase", "goal_aux", "state_history", "execute")}
    config = ExperimentConfig.preset("smoke", **options, record_image_size=96, chunk_size=2)
    exp = Experiment(config, tmp_path / "run", tmp_path / "results", encoder=FakeEncoder(), command="test")
    assert exp.run() == {s: "ran" for s in STAGES}
    from lapa.policy.checkpoint_io import read_vla_config
    from lapa.policy.train import resolve_vla_checkpoint

    for method in METHODS:
        vla = read_vla_config(resolve_vla_checkpoint(tmp_path / "run" / "finetune" / method))[1]
        assert vla.state_history == (3, 6, 12) and vla.goal_aux, method
    evaluated = json.loads((tmp_path / "run" / "eval" / "lapa_seen.json").read_text())
    assert evaluated["chunk_mode"] == "ensemble" and evaluated["render_size"] == 96


def test_the_comparison_preset_keeps_the_papers_proportions():
    """The comparison's constraints: action-free >= 10x labelled, >= 100 evaluation episodes per method
    and condition."""
    from lapa.vocabulary import SUITES

    c = ExperimentConfig.preset("comparison")
    assert c.pretrain_episodes >= 10 * c.finetune_episodes
    assert c.eval_episodes * len(SUITES[c.suite]) >= 100
    assert c.precision == "bf16" and c.suite == "reach_push"


def test_a_piece_that_stops_on_a_pending_method_keeps_its_time(tmp_path):
    """Finetuning with LAPA's pretraining not run yet finetunes Scratch, then stops: its time is kept."""
    run = tmp_path / "run"
    exp = Experiment(ExperimentConfig.preset("smoke"), run, tmp_path / "results", encoder=FakeEncoder())
    exp.run(["record"])
    with pytest.raises(UserError, match="not finetuned yet"):
        exp.run(["finetune"])
    assert (run / "finetune" / "scratch").is_dir()
    timings = json.loads((run / "timings.json").read_text())
    assert timings["finetune"] > 0 and "record" in timings
