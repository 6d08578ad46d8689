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

from lapa.experiment.cli import register
from lapa.experiment.config import CONDITIONS, GAP_TARGET, METHODS, STAGES, ExperimentConfig, parse_overrides
from lapa.experiment.report import (
    collect_results,
    gap_recovered,
    markdown_table,
    plot_results,
    render_markdown,
    summarize_methods,
    write_json,
    write_report,
)
from lapa.experiment.stages import Experiment

__all__ = ["CONDITIONS", "GAP_TARGET", "METHODS", "STAGES", "Experiment", "ExperimentConfig", "collect_results",
           "gap_recovered", "markdown_table", "parse_overrides", "plot_results", "register", "render_markdown",
           "summarize_methods", "write_json", "write_report"]
