"""`Experiment`: the run directory and its stages, each skipped when its output exists."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lapa.errors import UserError
from lapa.experiment.config import CONDITIONS, METHODS, STAGES, ExperimentConfig
from lapa.experiment.report import collect_results, fmt, write_json, write_report


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
    @functools.cached_property
    def env(self):
        """One CPU process, with the configured training precision (checked once)."""
        from lapa.distributed import DistEnv, check_precision, resolve_device

        device = resolve_device("cpu")
        check_precision(device, self.c.precision)
        return DistEnv(device=device, requested_precision=self.c.precision)

    def _vla_config(self):
        from lapa.policy.config import VLAConfig

        return VLAConfig.preset(self.c.vla_preset, image_size=self.c.image_size, patch_size=self.c.patch_size,
                                chunk_size=self.c.chunk_size, num_bins=self.c.num_bins)

    def _opts(self, steps: int, finetuning: bool = False):
        """Training options; the image augmentation in finetuning (and in pretraining with
        augment_pretraining), the instruction augmentation in finetuning only."""
        from lapa.policy.train import TrainOptions

        c = self.c
        augment = {"none": False, "crop": "crop", "shift": "shift"}[c.augment]
        paraphrase = {"none": False, "templates": True, "broad": "broad"}[c.paraphrase]
        return TrainOptions(steps=steps, batch_size=c.batch_size, lr=c.lr,
                            augment=augment if finetuning or c.augment_pretraining else False,
                            paraphrase=paraphrase if finetuning else False,
                            ckpt_every=max(1, min(500, steps)), log_every=max(1, min(25, steps)),
                            threads=c.threads, progress=c.progress)

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
        from lapa.sim.record import ExpertOptions, record_dataset

        c = self.c
        expert = ExpertOptions(noise_m=c.expert_noise_m, dart_noise_m=c.dart_noise_m, until_done=c.until_done,
                               settle_steps=c.settle_steps, start_jitter_m=c.start_jitter_m)
        for root, n, seed, held_out in self._datasets():
            if not (root / "meta" / "info.json").is_file():
                summary = record_dataset(c.suite, n, root, seed=seed, image_size=c.record_image_size or c.image_size,
                                         held_out=held_out, progress=c.progress, expert=expert)
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
                           ckpt_every=max(1, min(200, c.laq_steps)), resume=True, progress=c.progress,
                           env=self.env)
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
              f"{fmt(quality.get('probe_accuracy'))} (chance {fmt(quality.get('chance_accuracy'))})")

    def run_pretrain(self) -> None:
        from lapa.policy.train import pretrain_latent

        self._require("label")
        r = pretrain_latent(self.labels, self.pretrain_run("lapa"), config=self._vla_config(),
                            opts=self._opts(self.c.pretrain_steps), resume=True, encoder=self.encoder,
                            env=self.env)
        print(f"  latent pretraining: loss {r.final_loss:.4f}, {r.samples_per_s:.0f} samples/s")

    def run_action_pretrain(self) -> None:
        from lapa.policy.train import pretrain_actions

        self._require("record")
        r = pretrain_actions([self.pretrain_data], self.pretrain_run("actionvla"), config=self._vla_config(),
                             opts=self._opts(self.c.pretrain_steps), resume=True, encoder=self.encoder,
                             env=self.env)
        print(f"  action pretraining: loss {r.final_loss:.4f}, {r.samples_per_s:.0f} samples/s")

    def run_vpt(self) -> None:
        from lapa.policy.vpt import run_vpt

        self._require("record")
        r = run_vpt([self.finetune_data], [self.pretrain_data], self.pretrain_run("vpt"), config=self._vla_config(),
                    opts=self._opts(self.c.pretrain_steps), idm_steps=self.c.idm_steps, resume=True,
                    encoder=self.encoder, env=self.env)
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
                                 config=self._vla_config(), opts=self._opts(self.c.finetune_steps, finetuning=True),
                                 goal_aux=self.c.goal_aux or None, state_history=self.c.lags or None,
                                 resume=True, encoder=self.encoder, env=self.env)
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
                execute_n = self.c.chunk_size if self.c.execute == "chunk" else 1  # chunk: replay whole chunks
                mode = "ensemble" if self.c.execute == "ensemble" else "first_n"
                result = evaluate_checkpoint(self.finetune_run(method), self.c.suite, self.c.eval_episodes,
                                             held_out=cond == "unseen", chunk_mode=mode, execute_n=execute_n,
                                             ensemble_decay=self.c.ensemble_decay, text_encoder=self.encoder,
                                             progress=self.c.progress)
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
            try:
                runners[stage]()
            finally:  # a piece that stops on a pending method (finetune, offline, eval) did work too
                seconds = time.perf_counter() - t0
                if stage != "report":
                    self._add_timing(stage, seconds)
            print(f"[{stage}] took {seconds:.0f} s ({seconds / 60:.1f} min)", flush=True)
            ran[stage] = "ran"
        return ran

    def _add_timing(self, stage: str, seconds: float) -> None:
        """Sum a stage's seconds over resumed runs; re-read first: another process may run other stages."""
        if self.timings_path.is_file():
            self.timings = json.loads(self.timings_path.read_text())
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        write_json(self.timings_path, self.timings)

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
