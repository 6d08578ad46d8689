"""`lapa train ...`: stage 2 (latent pretraining), stage 3 (finetuning) and the two baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lapa.distributed import add_arguments


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train the VLA: latent pretraining, finetuning, ActionVLA and VPT baselines")
    train_sub = train.add_subparsers(dest="train_command", metavar="TRAIN_COMMAND", required=True)

    p = train_sub.add_parser("pretrain", help="stage 2: predict LAQ latent actions (a label file from lapa laq label)")
    p.add_argument("--labels", type=Path, required=True, help="latent label file (.parquet)")
    _common(p, steps=2000)
    p.set_defaults(func=_pretrain)

    f = train_sub.add_parser("finetune", help="stage 3: action finetuning on robot episodes")
    f.add_argument("--init", required=True, help="'scratch', or a pretrained checkpoint / training run directory")
    f.add_argument("--data", nargs="+", required=True, help="LeRobot v3 datasets with actions")
    f.add_argument("--state-history", type=_lags, metavar="LAGS",
                   help="past states as input, control ticks back, comma-separated (e.g. 3,6,12; 'none' for "
                        "none); default: the init checkpoint's")
    f.add_argument("--wrist-camera", action="store_true",
                   help="add the hand camera (the datasets' observation.images.wrist) as a second image input")
    f.add_argument("--text-tokens", type=int, metavar="N",
                   help="take the instruction as the text encoder's features of its first N tokens (word order "
                        "kept; N word tokens join the prefix) instead of one sentence vector; default: the init's")
    f.add_argument("--text-pool", type=int, metavar="P",
                   help="with --text-tokens: P learned queries read words of the instruction by their role and "
                        "FiLM them into the image encoder (e.g. 2: the block to lift, the block to put it on)")
    f.add_argument("--word-dropout", type=float, default=0.0, metavar="P",
                   help="with --text-tokens: each word of the instruction is dropped with probability P in "
                        "training (robustness to unfamiliar wordings; default: %(default)s)")
    f.add_argument("--word-noise", type=float, default=0.0, metavar="S",
                   help="with --text-tokens: Gaussian noise of S times each word's feature norm in training "
                        "(an unfamiliar wording moves every contextual word feature; default: %(default)s)")
    f.add_argument("--sentence-noise", type=float, default=0.0, metavar="S",
                   help="Gaussian noise of S times the sentence vector's norm in training, so that the policy "
                        "does not lean on its exact value (an unfamiliar wording moves it far; default: "
                        "%(default)s)")
    f.add_argument("--data-weights", type=float, nargs="+", metavar="W",
                   help="one weight per --data dataset: its share of the batches (e.g. 1 1 1 2 draws the fourth "
                        "twice as often as each other); default: each dataset's share is its size")
    f.add_argument("--goal-target", choices=("final", "keyframe"), default="final",
                   help="what the goal query (--goal-aux) predicts: the episode's final EE position, or the next "
                        "gripper event's (the grasp, then the release)")
    _common(f, steps=1000)
    f.set_defaults(func=_finetune)

    h = train_sub.add_parser("latent-head",
                             help="a latent-action head beside a finetuned policy's action head (the intent preview); "
                                  "the rest of the policy is frozen and acts exactly as before")
    h.add_argument("--ckpt", required=True, help="the finetuned policy (checkpoint or training run directory)")
    h.add_argument("--labels", type=Path, required=True,
                   help="latent label file (.parquet, lapa laq label) from the LAQ of the policy's lineage")
    h.add_argument("--latent-init", help="a stage-2 checkpoint whose latent head starts the new one (the "
                                         "policy's own latent pretraining); default: a fresh head")
    _common(h, steps=500)
    h.set_defaults(func=_latent_head)

    a = train_sub.add_parser("action-pretrain", help="the ActionVLA baseline: pretraining on true actions")
    a.add_argument("--data", nargs="+", required=True, help="LeRobot v3 datasets with actions")
    _common(a, steps=2000)
    a.set_defaults(func=_action_pretrain)

    v = train_sub.add_parser("vpt", help="the VPT baseline: IDM on labelled episodes, pseudo-labels, pretraining")
    v.add_argument("--labelled", nargs="+", required=True, help="LeRobot v3 datasets with actions (IDM training)")
    v.add_argument("--videos", nargs="+", required=True,
                   help="action-free pretraining videos (video sets or LeRobot datasets; actions are ignored)")
    v.add_argument("--idm-steps", type=int, default=1000)
    v.add_argument("--idm-batch-size", type=int, default=64)
    _common(v, steps=2000)
    v.set_defaults(func=_vpt)


def _common(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, metrics.jsonl, loss.png)")
    p.add_argument("--steps", type=int, default=steps, help="global step to train to (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per device (per process)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant, or cosine: a half-cosine decay to 0.1 x --lr at --steps (default: %(default)s)")
    p.add_argument("--lr-decay-start", type=int, default=0, metavar="STEP",
                   help="cosine: hold --lr until STEP, then decay (warmup-stable-decay: resume a constant-rate "
                        "run with --steps beyond it to add only a decay phase; default: %(default)s)")
    p.add_argument("--preset", default="tiny", choices=("tiny", "base", "tabletop"),
                   help="model (from scratch): tiny, base, or tabletop (conv+FiLM encoder, state, l1 head)")
    p.add_argument("--image-size", type=int, help="override the preset's image size (from scratch)")
    p.add_argument("--patch-size", type=int, help="override the preset's patch size (from scratch)")
    p.add_argument("--chunk-size", type=int, help="actions per prediction (default: the preset's / init's)")
    p.add_argument("--num-bins", type=int, help="action bins per dimension (default: the preset's / init's)")
    p.add_argument("--decoder", choices=("parallel", "autoregressive"), help="action decoder")
    p.add_argument("--encoder", choices=("patch", "conv"), help="image encoder (from scratch)")
    p.add_argument("--no-film", action="store_true", help="conv encoder without FiLM conditioning (ablation)")
    p.add_argument("--keypoints", type=int, help="conv encoder: spatial-softmax keypoints as one more token (0: none)")
    p.add_argument("--state-dim", type=int, choices=(0, 8), help="proprio state input: 0 none, 8 (from scratch)")
    p.add_argument("--action-output", choices=("bins", "l1"), help="action head: quantile bins or l1 regression")
    p.add_argument("--goal-aux", action="store_true",
                   help="l1 head: auxiliary loss predicting the episode's final end-effector position")
    p.add_argument("--augment", nargs="?", const="crop", choices=("crop", "shift"), default=False,
                   help="image augmentation: crop (random resized crop 0.9 + jitter; the default when the flag "
                        "is given alone) or shift (DrQ random shift, 4 px)")
    p.add_argument("--paraphrase", nargs="?", const="templates", choices=("templates", "broad"), default=False,
                   help="instruction augmentation (action data): each sample gets any training wording of its task; "
                        "templates (the default when the flag is given alone): the augmentation templates; broad: "
                        "also the broad templates and noun / opening variants of every wording")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader processes preparing batches ahead of training (0: in the training process)")
    p.add_argument("--stream", action="store_true",
                   help="keep frames in the videos and decode a clip when a batch draws it (corpora larger than "
                        "memory), instead of decoding every clip up front")
    add_arguments(p)


def _options(args: argparse.Namespace, env: Any = None):
    """TrainOptions from the flags; progress bars (data decoding, training) on rank 0 only."""
    from lapa.policy.train import TrainOptions

    return TrainOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                        lr_decay_start=args.lr_decay_start, word_dropout=getattr(args, "word_dropout", 0.0),
                        word_noise=getattr(args, "word_noise", 0.0),
                        sentence_noise=getattr(args, "sentence_noise", 0.0),
                        augment=args.augment,
                        paraphrase=args.paraphrase,
                        ckpt_every=args.ckpt_every, log_every=args.log_every, seed=args.seed, threads=args.threads,
                        grad_accum=args.grad_accum, parallel=args.parallel, device=args.device,
                        workers=args.workers, stream=args.stream,
                        progress=env is None or env.is_main)


def _lags(text: str) -> tuple[int, ...]:
    """'3,6,12' -> (3, 6, 12); 'none' -> ()."""
    from lapa.state_history import check_lags

    if text.strip().lower() == "none":
        return ()
    try:
        return check_lags(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _config(args: argparse.Namespace):
    from lapa.policy.config import VLAConfig

    changes = {k: v for k, v in (("image_size", args.image_size), ("patch_size", args.patch_size),
                                 ("chunk_size", args.chunk_size), ("num_bins", args.num_bins),
                                 ("decoder", args.decoder), ("encoder", args.encoder),
                                 ("state_dim", args.state_dim), ("action_output", args.action_output),
                                 ("keypoints", args.keypoints))
               if v is not None}
    if args.no_film:
        changes["film"] = False
    if args.goal_aux:
        changes["goal_aux"] = True
    return VLAConfig.preset(args.preset, **changes)


def _print(result: Any, env: Any = None, **extra: Any) -> int:
    from dataclasses import asdict

    if env is not None and not env.is_main:
        return 0
    doc = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    print(json.dumps({**doc, **extra}, indent=2))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from lapa.distributed import command_env
    from lapa.policy.train import pretrain_latent

    with command_env(args.device, args.precision) as env:
        return _print(pretrain_latent(args.labels, args.out, config=_config(args), preset=args.preset,
                                      opts=_options(args, env), resume=args.resume, env=env), env)


def _finetune(args: argparse.Namespace) -> int:
    from lapa.distributed import command_env
    from lapa.policy.train import finetune_actions

    with command_env(args.device, args.precision) as env:
        return _print(finetune_actions(args.init, args.data, args.out, config=_config(args), preset=args.preset,
                                       chunk_size=args.chunk_size, num_bins=args.num_bins, decoder=args.decoder,
                                       action_output=args.action_output, goal_aux=args.goal_aux or None,
                                       state_history=args.state_history,
                                       cameras=("scene", "wrist") if args.wrist_camera else None,
                                       text_tokens=args.text_tokens, text_pool=args.text_pool,
                                       goal_target=args.goal_target, data_weights=args.data_weights,
                                       opts=_options(args, env),
                                       resume=args.resume, env=env), env)


def _latent_head(args: argparse.Namespace) -> int:
    from lapa.distributed import command_env
    from lapa.policy.train import train_latent_head

    with command_env(args.device, args.precision) as env:
        return _print(train_latent_head(args.ckpt, args.labels, args.out, latent_init=args.latent_init,
                                        opts=_options(args, env), resume=args.resume, env=env), env)


def _action_pretrain(args: argparse.Namespace) -> int:
    from lapa.distributed import command_env
    from lapa.policy.train import pretrain_actions

    with command_env(args.device, args.precision) as env:
        return _print(pretrain_actions(args.data, args.out, config=_config(args), preset=args.preset,
                                       opts=_options(args, env), resume=args.resume, env=env), env)


def _vpt(args: argparse.Namespace) -> int:
    from lapa.distributed import command_env
    from lapa.policy.train import load_text_encoder
    from lapa.policy.vpt import run_vpt

    config = _config(args)
    with command_env(args.device, args.precision) as env:
        result = run_vpt(args.labelled, args.videos, args.out, config=config, opts=_options(args, env),
                         idm_steps=args.idm_steps, idm_batch_size=args.idm_batch_size, resume=args.resume,
                         encoder=load_text_encoder(), env=env)
        return _print(result, env)
