"""One process of `lapa bench train-throughput`: time training steps of LAQ or the VLA, alone or under torchrun.

Prints one JSON line on rank 0: model, preset, processes, parallel kind, step time, global samples/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("laq", "vla"), required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--parallel", default="ddp")
    p.add_argument("--precision", default="auto")
    args = p.parse_args()

    import torch

    from lapa.distributed import barrier, command_env
    from lapa.parallel import ParallelModel, choose_parallel
    from lapa.training import accumulate_step

    torch.set_num_threads(args.threads)
    with command_env(args.device, args.precision) as env:
        torch.manual_seed(0)
        B = args.batch_size
        if args.model == "laq":
            from lapa.laq.config import LAQConfig
            from lapa.laq.model import LAQ

            config = LAQConfig.preset(args.preset)
            model = LAQ(config)
            batch = config.fake_inputs(B, seed=env.rank).to(env.device)  # (B, 2, H, W, 3) uint8

            def loss_fn(m, x):
                return m(x).loss, None

            replicated = [model.nsvq.codebook]
            optimizer_cls, kwargs, clip = torch.optim.Adam, {"lr": 1e-4, "betas": (0.9, 0.99)}, 0.5
        else:
            from lapa.policy.config import VLAConfig
            from lapa.policy.datasets import Batch
            from lapa.policy.model import VLA
            from lapa.policy.train import compute_loss

            config = VLAConfig.preset(args.preset, head="latent")
            model = VLA(config)
            images, text = config.fake_inputs(B, seed=env.rank)  # (B, S, S, 3) uint8, (B, D)
            codes = torch.randint(0, config.latent_codebook_size, (B, config.latent_seq_len))  # (B, L)
            batch = Batch(images.to(env.device), text.to(env.device), codes=codes.to(env.device))
            loss_fn, replicated = compute_loss, []
            optimizer_cls, kwargs, clip = torch.optim.AdamW, {"lr": 3e-4, "betas": (0.9, 0.95)}, 1.0
        kind = choose_parallel(args.parallel, args.preset, env)
        parameters = sum(p.numel() for p in model.parameters())
        parallel = ParallelModel(model, loss_fn, env, kind, replicated=replicated)
        optimizer = optimizer_cls(parallel.parameters(), **kwargs)
        model.train()
        times = []
        for i in range(args.warmup + args.steps):
            barrier(env)
            if env.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            accumulate_step(parallel, optimizer, [batch], clip)
            if env.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        step_s = statistics.median(times)
        if env.is_main:
            print(json.dumps({"model": args.model, "preset": args.preset, "processes": env.world_size,
                              "parallel": kind, "device": env.device.type, "precision": env.precision,
                              "parameters": parameters,
                              "step_ms_median": 1e3 * step_s, "global_batch": B * env.world_size,
                              "samples_per_s": B * env.world_size / step_s}), flush=True)


if __name__ == "__main__":
    main()
