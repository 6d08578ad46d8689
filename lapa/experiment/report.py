"""The experiment's results: per-method success, the gap LAPA recovers, results.md / results.json, the plot."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lapa.experiment.config import ACTIONVLA_MARGIN, CONDITIONS, GAP_TARGET, METHODS

if TYPE_CHECKING:
    from lapa.experiment.stages import Experiment


def fmt(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, int | float) else "n/a"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def gap_recovered(scratch: float, lapa: float, actionvla: float) -> float | None:
    """Share of the Scratch -> ActionVLA gap LAPA recovers (None when there is no gap)."""
    gap = actionvla - scratch
    return None if gap <= 0 else (lapa - scratch) / gap


def bootstrap_gap_interval(evals: dict[str, dict[str, dict[str, Any]]], condition: str = "seen",
                           samples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% bootstrap interval of `gap_recovered` on `condition`: each method's episodes resampled with
    replacement within each task family (the evaluation's strata); None without per-episode results
    or when fewer than half the resamples have a gap."""
    import numpy as np

    rng = np.random.default_rng(seed)
    outcomes = {}  # method -> per family: successes as 0/1 (n,)
    for m in ("scratch", "lapa", "actionvla"):
        episodes = evals[m][condition].get("episodes")
        if not episodes:
            return None
        families = sorted({e["family"] for e in episodes})
        outcomes[m] = [np.asarray([float(e["success"]) for e in episodes if e["family"] == f]) for f in families]
    values = []
    for _ in range(samples):
        rate = {m: np.mean(np.concatenate([rng.choice(x, len(x)) for x in per_family]))
                for m, per_family in outcomes.items()}
        value = gap_recovered(rate["scratch"], rate["lapa"], rate["actionvla"])
        if value is not None:
            values.append(value)
    if len(values) < samples / 2:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def summarize_methods(evals: dict[str, dict[str, dict[str, Any]]], bootstrap_samples: int = 2000) -> dict[str, Any]:
    """From {method: {condition: eval result}}: the table rows and whether the paper's bar is met."""
    rate = {m: {c: evals[m][c]["overall"]["success_rate"] for c in CONDITIONS} for m in METHODS}
    recovered = gap_recovered(rate["scratch"]["seen"], rate["lapa"]["seen"], rate["actionvla"]["seen"])
    margin = rate["actionvla"]["seen"] - rate["scratch"]["seen"]
    bar = {
        "actionvla_over_scratch_seen": margin,
        "actionvla_margin_target": ACTIONVLA_MARGIN,
        "actionvla_beats_scratch_seen": margin >= ACTIONVLA_MARGIN,
        "gap_recovered_seen": recovered,
        "gap_recovered_seen_ci95": bootstrap_gap_interval(evals, "seen", bootstrap_samples) if bootstrap_samples
        else None,
        "gap_target": GAP_TARGET,
        "lapa_recovers_gap_seen": recovered is not None and recovered >= GAP_TARGET,
        "lapa_beats_scratch_unseen": rate["lapa"]["unseen"] > rate["scratch"]["unseen"],
        "lapa_beats_vpt_unseen": rate["lapa"]["unseen"] > rate["vpt"]["unseen"],
    }
    bar["met"] = all(bar[k] for k in ("actionvla_beats_scratch_seen", "lapa_recovers_gap_seen",
                                      "lapa_beats_scratch_unseen", "lapa_beats_vpt_unseen"))
    methods = {m: {c: {"overall": evals[m][c]["overall"], "tasks": evals[m][c]["tasks"]} for c in CONDITIONS}
               for m in METHODS}
    return {"methods": methods, "bar": bar}


def collect_results(exp: Experiment) -> dict[str, Any]:
    evals = {m: {c: json.loads(exp.eval_file(m, c).read_text()) for c in CONDITIONS} for m in METHODS}
    doc = summarize_methods(evals, exp.c.bootstrap_samples)
    diagnostics: dict[str, Any] = {}
    laq_eval = exp.out / "laq_eval.json"
    if laq_eval.is_file():
        diagnostics["laq_eval_on_labelled_set"] = json.loads(laq_eval.read_text())
    quality = exp.pretrain_run("vpt") / "pseudo_quality.json"
    if quality.is_file():
        diagnostics["vpt_pseudo_labels"] = json.loads(quality.read_text())
    diagnostics["final_train_metrics"] = _final_metrics(exp)
    offline = {m: json.loads(p.read_text()) for m in METHODS if (p := exp.out / "offline" / f"{m}.json").is_file()}
    if offline:
        doc["offline"] = offline
    any_eval = evals["scratch"]["seen"]
    return {
        "command": exp.command, "config": asdict(exp.c), "timings_s": exp.timings,
        "eval": {"suite": any_eval["suite"], "episodes_per_task": any_eval["episodes_per_task"],
                 "seed_base": any_eval["seed_base"], "chunk_mode": any_eval.get("chunk_mode"),
                 "execute_n": any_eval.get("execute_n")},
        **doc, "diagnostics": diagnostics,
    }


def _final_metrics(exp: Experiment) -> dict[str, Any]:
    from lapa.training import read_metrics

    runs = {"laq": exp.out / "laq", **{f"pretrain/{m}": exp.pretrain_run(m) for m in ("lapa", "actionvla")},
            "pretrain/vpt": exp.pretrain_run("vpt") / "pretrain",
            **{f"finetune/{m}": exp.finetune_run(m) for m in METHODS}}
    out = {}
    for name, run in runs.items():
        path = run / "metrics.jsonl"
        if path.is_file() and (rows := read_metrics(path)):
            last = rows[-1]
            out[name] = {k: last[k] for k in ("step", "loss", "accuracy", "translation_mae_mm", "gripper_accuracy")
                         if k in last}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def markdown_table(doc: dict[str, Any]) -> str:
    methods = doc["methods"]
    families = list(next(iter(methods.values()))["seen"]["tasks"])
    head = ["method", "seen %", "seen 95% CI", "unseen %", "unseen 95% CI"] + [f"{f} (seen/unseen)" for f in families]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, res in methods.items():
        row = [f"`{m}`"]
        for c in CONDITIONS:
            o = res[c]["overall"]
            lo, hi = o["ci95"]
            row += [f"{_pct(o['success_rate'])} ({o['successes']}/{o['episodes']})", f"[{_pct(lo)}, {_pct(hi)}]"]
        for f in families:
            s, u = res["seen"]["tasks"][f], res["unseen"]["tasks"][f]
            row.append(f"{s['successes']}/{s['episodes']} / {u['successes']}/{u['episodes']}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def offline_table(offline: dict[str, Any]) -> str:
    cols = [("loss", "held-out loss", "{:.3f}"), ("translation_mae_mm", "translation MAE (mm)", "{:.1f}"),
            ("direction_cosine", "direction cosine", "{:.2f}"), ("gripper_accuracy", "gripper accuracy", "{:.2f}")]
    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for m, res in offline.items():
        cells = [" / ".join(fmt.format(res[c][key]) for c in CONDITIONS) for key, _, fmt in cols]
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(doc: dict[str, Any]) -> str:
    bar = doc["bar"]
    rec = bar["gap_recovered_seen"]
    out = ["# LAPA vs baselines on the simulated Franka tabletop", ""]
    if doc.get("command"):
        out += ["Command:", "", f"    {doc['command']}", ""]
    ev = doc.get("eval", {})
    if ev:
        out += [f"Closed-loop success in the fast simulator, suite `{ev.get('suite')}`, "
                f"{ev.get('episodes_per_task')} episodes per task family and condition (the same seeds for every "
                f"method, from {ev.get('seed_base')}); seen = training instruction templates, unseen = held-out "
                "paraphrases. Intervals are 95% Wilson score intervals.", ""]
    out += [markdown_table(doc), ""]
    ci = bar.get("gap_recovered_seen_ci95")
    ci_text = f" (bootstrap 95% interval {100 * ci[0]:.0f}% to {100 * ci[1]:.0f}%)" if ci else ""
    margin = bar.get("actionvla_over_scratch_seen")
    if margin is not None:
        verdict = "met" if bar["actionvla_beats_scratch_seen"] else "not met"
        out.append(f"- ActionVLA beats Scratch by **{100 * margin:.0f} points** on seen instructions (target >= "
                   f"{100 * bar['actionvla_margin_target']:.0f}): {verdict}.")
    out += [f"- LAPA recovers **{'n/a' if rec is None else f'{100 * rec:.0f}%'}** of the Scratch -> ActionVLA gap "
             f"on seen instructions{ci_text} (target >= {100 * bar['gap_target']:.0f}%): "
             f"{'met' if bar['lapa_recovers_gap_seen'] else 'not met'}.",
            f"- Unseen instructions: LAPA beats Scratch: {'yes' if bar['lapa_beats_scratch_unseen'] else 'no'}; "
            f"beats VPT: {'yes' if bar['lapa_beats_vpt_unseen'] else 'no'}.",
            f"- Bar met overall: **{'yes' if bar['met'] else 'no'}**.", ""]
    if doc.get("offline"):
        out += ["Offline action prediction on held-out expert episodes (other seeds; the first action of each "
                "chunk, argmax-decoded; seen / unseen wording):", "", offline_table(doc["offline"]), ""]
    if doc.get("timings_s"):
        out += ["Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in doc["timings_s"].items()), ""]
    return "\n".join(out)


def plot_results(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    """Bar plot: overall success per method, seen and unseen, with 95% Wilson intervals."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(doc["methods"])
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(methods))
    width = 0.38
    for i, cond in enumerate(CONDITIONS):
        rates = np.array([doc["methods"][m][cond]["overall"]["success_rate"] for m in methods])
        ci = np.array([doc["methods"][m][cond]["overall"]["ci95"] for m in methods])  # (M, 2)
        err = np.stack([rates - ci[:, 0], ci[:, 1] - rates])  # (2, M)
        ax.bar(x + (i - 0.5) * width, 100 * rates, width, yerr=100 * err, capsize=3, label=f"{cond} instructions")
    ax.set_xticks(x, methods)
    ax.set(ylabel="success rate (%)", ylim=(0, 100), title="Closed-loop success (95% Wilson intervals)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_report(doc: dict[str, Any], results: str | os.PathLike) -> list[Path]:
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    md = results / "results.md"
    md.write_text(render_markdown(doc))
    return [md, write_json(results / "results.json", doc), plot_results(doc, results / "success.png")]
