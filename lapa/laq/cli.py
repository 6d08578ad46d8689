"""`lapa laq ...`: train, label, inspect and evaluate the latent action model (stage 1)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lapa.distributed import add_arguments


def register(sub: argparse._SubParsersAction) -> None:
    laq = sub.add_parser("laq", help="stage 1: latent action quantization from videos without actions")
    laq_sub = laq.add_subparsers(dest="laq_command", metavar="LAQ_COMMAND", required=True)

    t = laq_sub.add_parser("train", help="train LAQ on frame pairs")
    t.add_argument("--data", nargs="+", required=True, help="video sets and/or LeRobot v3 datasets")
    t.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    t.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, metrics, plots)")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=32, help="frame pairs per device (per process)")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--gap-s", type=float, default=0.6, help="time between the two frames (seconds)")
    t.add_argument("--workers", type=int, default=2, help="data loading processes")
    t.add_argument("--ckpt-every", type=int, default=500)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--augment", action="store_true", help="random resized crop + brightness jitter")
    t.add_argument("--codebook-size", type=int, help="override the preset's codebook size")
    t.add_argument("--latent-seq-len", type=int, help="override the preset's number of latent tokens")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    t.add_argument("--index-cache", type=Path, default=None,
                   help="folder for the cached clip index of each dataset (default: ~/.cache/lapa/index)")
    add_arguments(t)
    t.set_defaults(func=_train)

    lab = laq_sub.add_parser("label", help="latent action codes for every frame pair (input to stage 2)")
    lab.add_argument("--ckpt", type=Path, required=True, help="checkpoint or training run directory")
    lab.add_argument("--data", nargs="+", required=True)
    lab.add_argument("--out", type=Path, required=True, help="label file (.parquet)")
    lab.add_argument("--gap-s", type=float, default=0.6)
    lab.set_defaults(func=_label)

    ins = laq_sub.add_parser("inspect", help="code grid, world-model rollout video, code-usage histograms")
    ins.add_argument("--ckpt", type=Path, required=True)
    ins.add_argument("--data", nargs="+", required=True)
    ins.add_argument("--out", type=Path, required=True, help="output directory")
    ins.add_argument("--gap-s", type=float, default=0.6)
    ins.add_argument("--seed", type=int, default=0)
    ins.set_defaults(func=_inspect)

    ev = laq_sub.add_parser("eval", help="PSNR vs copying, codebook perplexity, linear probe on true motion")
    ev.add_argument("--ckpt", type=Path, required=True)
    ev.add_argument("--data", nargs="+", required=True, help="held-out data (LeRobot datasets give the probe)")
    ev.add_argument("--json", type=Path, help="write the results here")
    ev.add_argument("--gap-s", type=float, default=0.6)
    ev.add_argument("--max-pairs", type=int, default=None)
    ev.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    import torch

    from lapa.data.frame_pairs import ClipCatalog, pair_batches
    from lapa.distributed import command_env, main_first
    from lapa.laq.config import LAQConfig
    from lapa.laq.train import train_laq

    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("codebook_size", args.codebook_size),
                                   ("latent_seq_len", args.latent_seq_len)) if v is not None}
    config = LAQConfig.preset(args.preset, **overrides)
    with command_env(args.device, args.precision) as env:
        with main_first(env):  # rank 0 builds and caches the clip index, the others read it
            catalog = ClipCatalog(args.data, index_cache=args.index_cache or True)
        batches = pair_batches(catalog, config.image_size, args.batch_size, gap_s=args.gap_s,
                               workers=args.workers, seed=args.seed, augment=args.augment,
                               rank=env.rank, world_size=env.world_size)
        result = train_laq(config, batches, args.steps, args.out, lr=args.lr, ckpt_every=args.ckpt_every,
                           resume=args.resume, seed=args.seed, env=env, grad_accum=args.grad_accum,
                           parallel=args.parallel, preset=args.preset,
                           consistency={"data index": catalog.index_digest, "data options": [
                               args.batch_size, args.gap_s, args.augment, args.workers]})
        if env.is_main:
            print(json.dumps(_jsonable(result), indent=2))
    return 0


def _label(args: argparse.Namespace) -> int:
    from lapa.laq.evaluate import load_laq, resolve_checkpoint
    from lapa.laq.labels import label_dataset

    ckpt = resolve_checkpoint(args.ckpt)
    labels = label_dataset(load_laq(ckpt), ckpt, args.data, args.out, gap_s=args.gap_s)
    print(json.dumps({"out": str(args.out), "pairs": len(labels), **labels.meta}, indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from lapa.data.frame_pairs import ClipCatalog
    from lapa.laq.evaluate import load_laq
    from lapa.laq.inspect import inspect_laq

    paths = inspect_laq(load_laq(args.ckpt), ClipCatalog(args.data), args.out, gap_s=args.gap_s, seed=args.seed)
    print(json.dumps(paths, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from lapa.data.frame_pairs import ClipCatalog
    from lapa.laq.evaluate import evaluate_laq, load_laq

    result = evaluate_laq(load_laq(args.ckpt), ClipCatalog(args.data), gap_s=args.gap_s, max_pairs=args.max_pairs)
    result = {"command": "lapa laq eval " + " ".join(_argv_tail("eval")), **result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


def _argv_tail(after: str) -> list[str]:
    import sys

    argv = sys.argv[1:]
    return argv[argv.index(after) + 1:] if after in argv else argv


def _jsonable(obj) -> dict:
    from dataclasses import asdict, is_dataclass

    d = asdict(obj) if is_dataclass(obj) else dict(obj)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
