"""`lapa eval`: closed-loop success rates of a finetuned VLA in the fast simulator."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EVAL_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")  # policy_server/backends.py's names

def register(sub: argparse._SubParsersAction) -> None:
    from lapa.chunking import CHUNK_MODES, DEFAULT_ENSEMBLE_DECAY
    from lapa.eval.closed_loop import EVAL_SEED_BASE

    ev = sub.add_parser("eval", help="closed-loop success rate of a VLA checkpoint, per task, with 95%% intervals")
    ev.add_argument("--ckpt", type=Path, required=True, help="VLA checkpoint or training run directory")
    ev.add_argument("--suite", default="default", help="task suite (default: %(default)s)")
    ev.add_argument("--episodes", type=int, default=10, help="episodes per task family (default: %(default)s)")
    ev.add_argument("--json", type=Path, help="write the results here")
    ev.add_argument("--videos", type=Path, help="write mp4s of the first episodes of each task here")
    ev.add_argument("--max-videos", type=int, default=2, help="videos per task family (default: %(default)s)")
    ev.add_argument("--held-out", action="store_true",
                    help="unseen instructions: held-out paraphrases instead of the training templates")
    ev.add_argument("--chunk-mode", choices=CHUNK_MODES, default="first_n",
                    help="how each action chunk is executed, as by the ROS policy node: first_n (the first "
                         "--execute-n actions, then ask again) or ensemble (ask every step, temporal ensembling) "
                         "(default: %(default)s)")
    ev.add_argument("--execute-n", type=int, default=1,
                    help="first_n: actions executed per chunk; 1 is plain closed loop, the chunk size replays "
                         "whole chunks (default: %(default)s)")
    ev.add_argument("--ensemble-decay", type=float, default=DEFAULT_ENSEMBLE_DECAY,
                    help="ensemble: weight exp(-decay * steps since the prediction) (default: %(default)s)")
    ev.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE, help="first evaluation seed")
    ev.add_argument("--render-size", type=int, help="camera size (default: the training dataset's)")
    ev.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    ev.add_argument("--backend", choices=EVAL_BACKENDS, default="torch",
                    help="the policy server backend that runs the model: the checkpoint in torch (default), or its "
                         "ONNX export in ONNX Runtime, fp32 or static int8 (exported and cached on first use)")
    ev.add_argument("--grounding-probe", type=int, metavar="SCENES",
                    help="instead of closed-loop episodes: the grounding probe on this many scenes "
                         "(lapa/eval/grounding.py: does the first move follow the named colour?)")
    ev.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import torch

    from lapa.eval.closed_loop import evaluate_checkpoint

    torch.set_num_threads(args.threads)
    if args.grounding_probe:
        from lapa.eval.grounding import grounding_probe

        probe = grounding_probe(args.ckpt, args.grounding_probe)
        print(json.dumps(probe, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(probe, indent=2) + "\n")
        return 0
    policy = None
    if args.backend != "torch":
        from lapa.errors import UserError
        from lapa.policy.train import resolve_vla_checkpoint

        load_policy = getattr(args, "load_policy", None)  # set by lapa/cli.py: the serving layer is above this one
        if load_policy is None:
            raise UserError(f"--backend {args.backend} needs the `lapa` command line, which loads serving backends")
        policy = load_policy(args.backend, resolve_vla_checkpoint(args.ckpt), args.threads)
    result = evaluate_checkpoint(args.ckpt, args.suite, args.episodes, held_out=args.held_out,
                                 chunk_mode=args.chunk_mode, execute_n=args.execute_n,
                                 ensemble_decay=args.ensemble_decay, seed_base=args.seed_base, videos=args.videos,
                                 max_videos_per_task=args.max_videos, render_size=args.render_size, policy=policy)
    result = {"command": _command(args), **result}
    summary = {k: v for k, v in result.items() if k != "episodes"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The equivalent command line (from the parsed options, whoever called main)."""
    parts = ["lapa eval", f"--ckpt {args.ckpt}", f"--suite {args.suite}", f"--episodes {args.episodes}",
             f"--chunk-mode {args.chunk_mode}", f"--execute-n {args.execute_n}",
             f"--ensemble-decay {args.ensemble_decay}", f"--seed-base {args.seed_base}"]
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in (("json", args.json), ("videos", args.videos),
                                                        ("render_size", args.render_size)) if v is not None]
    parts += [f"--backend {args.backend}"] if args.backend != "torch" else []
    return " ".join(parts + (["--held-out"] if args.held_out else []))
