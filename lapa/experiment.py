"""`lapa experiment run`: the paper's comparison (Scratch, LAPA, ActionVLA, VPT) end to end on the simulator.

Stages, each skipped when its output exists (training runs resume from their newest checkpoint):

    record           data/pretrain  (many expert episodes, recorded WITH actions as LeRobot v3; LAQ and
                                     LAPA read only its frames and captions, ActionVLA its true actions)
                     data/finetune  (the small labelled set: other seeds, ~10% as many episodes)
                     data/heldout, data/heldout_unseen (more expert episodes, other seeds, training
                                     templates / held-out paraphrases: offline action metrics only)
    laq              laq/           LAQ (stage 1) on the pretraining frames
    label            labels.parquet latent actions of every pretraining frame pair; laq_eval.json
    pretrain         pretrain/lapa       latent pretraining (stage 2)
    action-pretrain  pretrain/actionvla  pretraining on the true actions
    vpt              pretrain/vpt        IDM on the labelled set -> pseudo-labels -> action pretraining
    finetune         finetune/{scratch,lapa,actionvla,vpt}  the same finetuning budget for all four
    offline          offline/{method}.json  action prediction on held-out expert episodes (data/heldout*)
    eval             eval/{method}_{seen,unseen}.json       the same seeds for all, seen + unseen wording
    report           <results>/results.{md,json}, success.png

Every stage prints how long it took; `timings.json` in the run directory keeps them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lapa.errors import UserError

METHODS = ("scratch", "lapa", "actionvla", "vpt")
CONDITIONS = ("seen", "unseen")
STAGES = ("record", "laq", "label", "pretrain", "action-pretrain", "vpt", "finetune", "offline", "eval", "report")
GAP_TARGET = 0.75  # LAPA should recover this share of the Scratch -> ActionVLA gap (seen instructions)


@dataclass(frozen=True)
class ExperimentConfig:
    suite: str = "reach"  # see experiments/results/README.md for why not the four-task suite
    image_size: int = 64  # recorded frames and model input
    pretrain_episodes: int = 480  # the "action-free" videos
    finetune_episodes: int = 24  # the small labelled set (5%)
    pretrain_seed: int = 0  # recorder seeds base + index (+ 1_000_003 per retry)
    finetune_seed: int = 200_000
    heldout_seed: int = 300_000  # offline metrics; as many episodes as the finetuning set
    # stage 1
    laq_preset: str = "tiny"
    laq_steps: int = 1000
    laq_batch_size: int = 32
    laq_lr: float = 3e-4
    gap_s: float = 0.6
    codebook_size: int | None = None  # None: the preset's (8)
    # VLA
    vla_preset: str = "tiny"
    patch_size: int = 16  # 4x4 patches of 64x64 frames: as good per step as 8x8 here and 3x cheaper
    chunk_size: int = 2
    num_bins: int = 64
    batch_size: int = 16
    lr: float = 1e-3
    pretrain_steps: int = 6000  # the same for LAPA, ActionVLA and VPT
    finetune_steps: int = 2000  # the same for all four methods
    augment: bool = False
    idm_steps: int = 800
    # evaluation
    eval_episodes: int = 30  # per task family and instruction condition
    execute: str = "first"
    # machine
    threads: int = 2
    data_workers: int = 1
    progress: bool = True

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ExperimentConfig:
        if name not in PRESETS:
            raise UserError(f"unknown experiment preset {name!r}; choose from {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, ExperimentConfig] = {
    "default": ExperimentConfig(),
    # seconds, for tests: every stage runs, nothing learns
    "smoke": ExperimentConfig(suite="reach", pretrain_episodes=2, finetune_episodes=2, laq_steps=2, laq_batch_size=4,
                              pretrain_steps=2, finetune_steps=2, batch_size=4, idm_steps=2, eval_episodes=1,
                              threads=1, data_workers=0, progress=False),
}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings -> typed ExperimentConfig overrides."""
    fields = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise UserError(f"bad override {item!r}: use KEY=VALUE with KEY one of {sorted(fields)}")
        default = getattr(PRESETS["default"], key)
        if raw.lower() == "none":
            out[key] = None
        elif isinstance(default, bool):
            out[key] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int) or key == "codebook_size":
            out[key] = int(raw)
        elif isinstance(default, float):
            out[key] = float(raw)
        else:
            out[key] = raw
    return out


# ----------------------------------------------------------------------------- the run


class Experiment:
    def __init__(self, config: ExperimentConfig, out: str | os.PathLike, results: str | os.PathLike,
                 encoder: Any | None = None, command: str | None = None) -> None:
        self.c = config
        self.out = Path(out)
        self.results = Path(results)
        self._encoder = encoder
        self.command = command or ""
        self.timings_path = self.out / "timings.json"
        self.timings: dict[str, Any] = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}

    # -- paths
    @property
    def pretrain_data(self) -> Path:
        return self.out / "data" / "pretrain"

    @property
    def finetune_data(self) -> Path:
        return self.out / "data" / "finetune"

    def heldout_data(self, condition: str) -> Path:
        return self.out / "data" / ("heldout" if condition == "seen" else "heldout_unseen")

    def _datasets(self) -> list[tuple[Path, int, int, bool]]:
        """(root, episodes, seed, held-out wording) of every recording."""
        c = self.c
        return [(self.pretrain_data, c.pretrain_episodes, c.pretrain_seed, False),
                (self.finetune_data, c.finetune_episodes, c.finetune_seed, False),
                (self.heldout_data("seen"), c.finetune_episodes, c.heldout_seed, False),
                (self.heldout_data("unseen"), c.finetune_episodes, c.heldout_seed, True)]

    @property
    def labels(self) -> Path:
        return self.out / "labels.parquet"

    def pretrain_run(self, method: str) -> Path:
        return self.out / "pretrain" / method

    def finetune_run(self, method: str) -> Path:
        return self.out / "finetune" / method

    def eval_file(self, method: str, condition: str) -> Path:
        return self.out / "eval" / f"{method}_{condition}.json"

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from lapa.policy.train import load_text_encoder

            self._encoder = load_text_encoder()
        return self._encoder

    # -- helpers
    def _vla_config(self):
        from lapa.policy.config import VLAConfig

        return VLAConfig.preset(self.c.vla_preset, image_size=self.c.image_size, patch_size=self.c.patch_size,
                                chunk_size=self.c.chunk_size, num_bins=self.c.num_bins)

    def _opts(self, steps: int, augment: bool = False):
        from lapa.policy.train import TrainOptions

        return TrainOptions(steps=steps, batch_size=self.c.batch_size, lr=self.c.lr, augment=augment,
                            ckpt_every=max(1, min(500, steps)), log_every=max(1, min(25, steps)),
                            threads=self.c.threads, progress=self.c.progress)

    def _laq_steps_done(self) -> int:
        from lapa.policy.train import run_step

        return run_step(self.out / "laq")

    def _vla_step(self, run: Path) -> int:
        from lapa.policy.train import run_step

        return run_step(run)

    # -- stages: (done?, run)
    def done(self, stage: str) -> bool:
        c = self.c
        if stage == "record":
            return all((d[0] / "meta" / "info.json").is_file() for d in self._datasets())
        if stage == "laq":
            return self._laq_steps_done() >= c.laq_steps
        if stage == "label":
            return self.labels.is_file()
        if stage == "pretrain":
            return self._vla_step(self.pretrain_run("lapa")) >= c.pretrain_steps
        if stage == "action-pretrain":
            return self._vla_step(self.pretrain_run("actionvla")) >= c.pretrain_steps
        if stage == "vpt":
            return self._vla_step(self.pretrain_run("vpt") / "pretrain") >= c.pretrain_steps
        if stage == "finetune":
            return all(self._vla_step(self.finetune_run(m)) >= c.finetune_steps for m in METHODS)
        if stage == "offline":
            return all((self.out / "offline" / f"{m}.json").is_file() for m in METHODS)
        if stage == "eval":
            return all(self.eval_file(m, cond).is_file() for m in METHODS for cond in CONDITIONS)
        if stage == "report":
            return False  # cheap and derived: always rewritten
        raise UserError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")

    def _require(self, *stages: str) -> None:
        missing = [s for s in stages if not self.done(s)]
        if missing:
            raise UserError(f"stage(s) {', '.join(missing)} have not run yet: run them first (or --stage all)")

    def run_record(self) -> None:
        from lapa.sim.record import record_dataset

        c = self.c
        for root, n, seed, held_out in self._datasets():
            if not (root / "meta" / "info.json").is_file():
                summary = record_dataset(c.suite, n, root, seed=seed, image_size=c.image_size, held_out=held_out,
                                         progress=c.progress)
                print(f"  recorded {summary.episodes} episodes ({summary.frames} frames) into {root} "
                      f"in {summary.seconds:.0f} s")
        from lapa.eval.closed_loop import recorded_seeds

        sets = [recorded_seeds(self.pretrain_data), recorded_seeds(self.finetune_data),
                recorded_seeds(self.heldout_data("seen"))]
        overlap = (sets[0] & sets[1]) | (sets[0] & sets[2]) | (sets[1] & sets[2])
        if overlap:
            raise UserError(f"pretraining, finetuning and held-out episodes share seeds {sorted(overlap)[:5]}")

    def run_laq(self) -> None:
        import torch

        from lapa.data.frame_pairs import ClipCatalog, pair_batches
        from lapa.laq.config import LAQConfig
        from lapa.laq.train import train_laq

        self._require("record")
        c = self.c
        torch.set_num_threads(c.threads)
        overrides = {"codebook_size": c.codebook_size} if c.codebook_size else {}
        config = LAQConfig.preset(c.laq_preset, **overrides)
        batches = pair_batches(ClipCatalog([self.pretrain_data]), config.image_size, c.laq_batch_size, gap_s=c.gap_s,
                               workers=c.data_workers, seed=0)
        result = train_laq(config, batches, c.laq_steps, self.out / "laq", lr=c.laq_lr,
                           ckpt_every=max(1, min(200, c.laq_steps)), resume=True, progress=c.progress)
        print(f"  LAQ: loss {result.final_loss:.4f} at step {result.steps}, {result.pairs_per_s:.1f} pairs/s")

    def run_label(self) -> None:
        from lapa.data.frame_pairs import ClipCatalog
        from lapa.laq.evaluate import evaluate_laq, load_laq, resolve_checkpoint
        from lapa.laq.labels import label_dataset

        self._require("laq")
        ckpt = resolve_checkpoint(self.out / "laq")
        model = load_laq(ckpt)
        # held-out quality of the latent actions first (small: the labelled episodes), for the analysis
        try:
            quality = evaluate_laq(model, ClipCatalog([self.finetune_data]), gap_s=self.c.gap_s,
                                   progress=self.c.progress)
        except (UserError, ValueError) as err:  # e.g. too few clips for the probe's split
            quality = {"error": str(err)}
        write_json(self.out / "laq_eval.json", quality)
        labels = label_dataset(model, ckpt, [self.pretrain_data], self.labels, gap_s=self.c.gap_s,
                               progress=self.c.progress)
        print(f"  labelled {len(labels)} frame pairs; held-out LAQ probe accuracy "
              f"{_fmt(quality.get('probe_accuracy'))} (chance {_fmt(quality.get('chance_accuracy'))})")

    def run_pretrain(self) -> None:
        from lapa.policy.train import pretrain_latent

        self._require("label")
        r = pretrain_latent(self.labels, self.pretrain_run("lapa"), config=self._vla_config(),
                            opts=self._opts(self.c.pretrain_steps), resume=True, encoder=self.encoder)
        print(f"  latent pretraining: loss {r.final_loss:.4f}, {r.samples_per_s:.0f} samples/s")

    def run_action_pretrain(self) -> None:
        from lapa.policy.train import pretrain_actions

        self._require("record")
        r = pretrain_actions([self.pretrain_data], self.pretrain_run("actionvla"), config=self._vla_config(),
                             opts=self._opts(self.c.pretrain_steps), resume=True, encoder=self.encoder)
        print(f"  action pretraining: loss {r.final_loss:.4f}, {r.samples_per_s:.0f} samples/s")

    def run_vpt(self) -> None:
        from lapa.policy.vpt import run_vpt

        self._require("record")
        r = run_vpt([self.finetune_data], [self.pretrain_data], self.pretrain_run("vpt"), config=self._vla_config(),
                    opts=self._opts(self.c.pretrain_steps), idm_steps=self.c.idm_steps, resume=True,
                    encoder=self.encoder)
        print(f"  VPT pretraining: loss {r.final_loss:.4f}, {r.samples_per_s:.0f} samples/s")

    def run_finetune(self) -> None:
        """Finetune every method whose pretraining has finished; the others are named at the end."""
        from lapa.policy.train import finetune_actions

        self._require("record")
        inits = {"scratch": "scratch", "lapa": self.pretrain_run("lapa"), "actionvla": self.pretrain_run("actionvla"),
                 "vpt": self.pretrain_run("vpt") / "pretrain"}
        needs = {"lapa": "pretrain", "actionvla": "action-pretrain", "vpt": "vpt"}
        pending = []
        for method in METHODS:
            if self._vla_step(self.finetune_run(method)) >= self.c.finetune_steps:
                continue
            if method != "scratch" and not self.done(needs[method]):
                pending.append(f"{method} (run stage {needs[method]} first)")
                continue
            t0 = time.perf_counter()
            r = finetune_actions(inits[method], [self.finetune_data], self.finetune_run(method),
                                 config=self._vla_config(), opts=self._opts(self.c.finetune_steps, self.c.augment),
                                 resume=True, encoder=self.encoder)
            print(f"  finetune {method}: loss {r.final_loss:.4f} in {time.perf_counter() - t0:.0f} s")
        if pending:
            raise UserError("not finetuned yet: " + ", ".join(pending))

    def run_offline(self) -> None:
        """Held-out action prediction of every finetuned method, seen and unseen wording."""
        from lapa.policy.train import evaluate_actions

        self._require("record")
        pending = []
        for method in METHODS:
            path = self.out / "offline" / f"{method}.json"
            if path.is_file():
                continue
            if self._vla_step(self.finetune_run(method)) < self.c.finetune_steps:
                pending.append(method)
                continue
            doc = {cond: evaluate_actions(self.finetune_run(method), [self.heldout_data(cond)], encoder=self.encoder)
                   for cond in CONDITIONS}
            write_json(path, doc)
            print(f"  {method:9s} held-out: " + ", ".join(
                f"{cond} loss {d['loss']:.3f} MAE {d['translation_mae_mm']:.1f} mm cos {d['direction_cosine']:.2f}"
                for cond, d in doc.items()))
        if pending:
            raise UserError(f"not finetuned yet: {', '.join(pending)} (run stage finetune)")

    def run_eval(self) -> None:
        """Evaluate every finetuned method (seen and unseen); the unfinished ones are named at the end."""
        import torch

        from lapa.eval.closed_loop import evaluate_checkpoint

        self._require("record")
        torch.set_num_threads(1)  # batch-1 inference: a second thread only adds overhead
        pending = []
        for method in METHODS:
            if self._vla_step(self.finetune_run(method)) < self.c.finetune_steps:
                pending.append(method)
                continue
            for cond in CONDITIONS:
                path = self.eval_file(method, cond)
                if path.is_file():
                    continue
                if self.c.execute not in ("first", "chunk"):
                    raise UserError(f"execute must be 'first' or 'chunk', got {self.c.execute!r}")
                execute_n = self.c.chunk_size if self.c.execute == "chunk" else 1  # chunk: replay whole chunks
                result = evaluate_checkpoint(self.finetune_run(method), self.c.suite, self.c.eval_episodes,
                                             held_out=cond == "unseen", chunk_mode="first_n", execute_n=execute_n,
                                             text_encoder=self.encoder, progress=self.c.progress)
                write_json(path, result)
                o = result["overall"]
                print(f"  {method:9s} {cond:6s}: {o['successes']}/{o['episodes']} "
                      f"({100 * o['success_rate']:.0f}%) in {result['seconds']:.0f} s")
        if pending:
            raise UserError(f"not finetuned yet, so not evaluated: {', '.join(pending)} (run stage finetune)")

    def run_report(self) -> None:
        self._require("eval")
        doc = collect_results(self)
        paths = write_report(doc, self.results)
        print("  wrote " + ", ".join(str(p) for p in paths))

    # -- driver
    def run(self, stages: list[str] | None = None) -> dict[str, Any]:
        selected = list(STAGES) if not stages or stages == ["all"] else stages
        unknown = [s for s in selected if s not in STAGES]
        if unknown:
            raise UserError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)} or all")
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_config()
        runners: dict[str, Callable[[], None]] = {
            "record": self.run_record, "laq": self.run_laq, "label": self.run_label, "pretrain": self.run_pretrain,
            "action-pretrain": self.run_action_pretrain, "vpt": self.run_vpt, "finetune": self.run_finetune,
            "offline": self.run_offline, "eval": self.run_eval, "report": self.run_report,
        }
        ran: dict[str, str] = {}
        for stage in STAGES:
            if stage not in selected:
                continue
            if self.done(stage):
                print(f"[{stage}] done already, skipped")
                ran[stage] = "skipped"
                continue
            print(f"[{stage}] running", flush=True)
            t0 = time.perf_counter()
            runners[stage]()
            seconds = time.perf_counter() - t0
            if stage != "report":  # re-read first: another process may be running other stages
                if self.timings_path.is_file():
                    self.timings = json.loads(self.timings_path.read_text())
                self.timings[stage] = self.timings.get(stage, 0.0) + seconds  # summed over resumed runs
                write_json(self.timings_path, self.timings)
            print(f"[{stage}] took {seconds:.0f} s ({seconds / 60:.1f} min)", flush=True)
            ran[stage] = "ran"
        return ran

    def _check_config(self) -> None:
        path = self.out / "experiment_config.json"
        new = asdict(self.c)
        if path.is_file():
            old = json.loads(path.read_text())
            diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v and k != "progress"}
            if diff:
                print(f"note: config differs from the one this run started with (old, new): {diff}; "
                      "finished stages are not redone", file=sys.stderr)
        write_json(path, new)


# ----------------------------------------------------------------------------- results


def _fmt(x: Any) -> str:
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


def summarize_methods(evals: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """From {method: {condition: eval result}}: the table rows and whether the paper's bar is met."""
    rate = {m: {c: evals[m][c]["overall"]["success_rate"] for c in CONDITIONS} for m in METHODS}
    recovered = gap_recovered(rate["scratch"]["seen"], rate["lapa"]["seen"], rate["actionvla"]["seen"])
    bar = {
        "gap_recovered_seen": recovered,
        "gap_target": GAP_TARGET,
        "lapa_recovers_gap_seen": recovered is not None and recovered >= GAP_TARGET,
        "lapa_beats_scratch_unseen": rate["lapa"]["unseen"] > rate["scratch"]["unseen"],
        "lapa_beats_vpt_unseen": rate["lapa"]["unseen"] > rate["vpt"]["unseen"],
    }
    bar["met"] = all(bar[k] for k in ("lapa_recovers_gap_seen", "lapa_beats_scratch_unseen", "lapa_beats_vpt_unseen"))
    methods = {m: {c: {"overall": evals[m][c]["overall"], "tasks": evals[m][c]["tasks"]} for c in CONDITIONS}
               for m in METHODS}
    return {"methods": methods, "bar": bar}


def collect_results(exp: Experiment) -> dict[str, Any]:
    evals = {m: {c: json.loads(exp.eval_file(m, c).read_text()) for c in CONDITIONS} for m in METHODS}
    doc = summarize_methods(evals)
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
    out += [f"- LAPA recovers **{'n/a' if rec is None else f'{100 * rec:.0f}%'}** of the Scratch -> ActionVLA gap "
             f"on seen instructions (target >= {100 * bar['gap_target']:.0f}%): "
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


# ----------------------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("experiment", help="the paper's comparison: Scratch, LAPA, ActionVLA, VPT on the simulator")
    exp_sub = exp.add_subparsers(dest="experiment_command", metavar="EXPERIMENT_COMMAND", required=True)
    run = exp_sub.add_parser("run", help="record, train, finetune, evaluate and tabulate (each stage resumable)")
    run.add_argument("--out", type=Path, required=True, help="run directory (data, checkpoints, evaluations)")
    run.add_argument("--results", type=Path, default=Path("experiments/results"),
                     help="where the table and plot go (default: %(default)s)")
    run.add_argument("--stage", nargs="+", default=["all"], help=f"stages to run: {', '.join(STAGES)} or all")
    run.add_argument("--preset", default="default", choices=sorted(PRESETS))
    run.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override ExperimentConfig fields")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = ExperimentConfig.preset(args.preset, **parse_overrides(args.set))
    command = (f"lapa experiment run --out {args.out} --results {args.results} --preset {args.preset} "
               f"--stage {' '.join(args.stage)}" + (f" --set {' '.join(args.set)}" if args.set else ""))
    t0 = time.perf_counter()
    Experiment(config, args.out, args.results, command=command).run(args.stage)
    print(f"experiment: {time.perf_counter() - t0:.0f} s")
    return 0
