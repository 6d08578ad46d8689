"""The GPU check behind scripts/gpu_check.sh: train every preset under torchrun with bf16, export the
VLA, build the TensorRT engine, check its parity, time it; one JSON report.

Run it with the project's Python on a machine with an NVIDIA GPU (scripts/gpu_check.sh sets up the
environment first). It stops at the first failing stage, and the report says which stage failed and
where its log is. Without a CUDA GPU it fails at once, before anything runs.

Stages (each a real `lapa` command, logged to OUT/logs/<stage>.log):
  data          lapa sim record: scripted-expert episodes (LeRobot v3), the only data this needs
  laq_<preset>  torchrun ... lapa laq train --preset {tiny, paper} --device cuda   (DDP / FSDP2, bf16)
  label         lapa laq label with the tiny LAQ: the stage-2 targets
  pretrain_<p>  torchrun ... lapa train pretrain --preset {tiny, base, tabletop}
  finetune_<p>  torchrun ... lapa train finetune --init <its pretraining run>
  export        lapa export onnx on the tiny finetuned VLA (parity against torch checked there)
  tensorrt      lapa export tensorrt --fp16 (parity against ONNX Runtime checked there)
  trt_latency   batch-1 TensorRT latency over --latency-runs calls (median, p99)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `export` and `lapa` from this checkout, installed or not
LAQ_PRESETS = ("tiny", "paper")
VLA_PRESETS = ("tiny", "base", "tabletop")


class CheckFailed(Exception):
    pass


def gpu_preflight() -> dict:
    """The GPUs this check will use, or CheckFailed with the reason there are none."""
    try:
        import torch
    except ImportError as err:
        raise CheckFailed(f"torch is not importable ({err}): run ./run setup first") from err
    if not torch.cuda.is_available():
        raise CheckFailed(f"no CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False; "
                          f"is this a CPU-only torch build, or is the driver missing?). This check needs a GPU.")
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": [
        {"name": torch.cuda.get_device_name(i), "bf16": torch.cuda.is_bf16_supported(),
         "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
        for i in range(torch.cuda.device_count())]}


class Runner:
    def __init__(self, out: Path, report: dict) -> None:
        self.out, self.report = out, report
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def stage(self, name: str, cmd: list[str], timeout_s: float) -> dict:
        """Run one command with its output in logs/<name>.log; record it; CheckFailed if it fails."""
        log_path = self.out / "logs" / f"{name}.log"
        t0 = time.perf_counter()
        print(f"[gpu-check] {name}: {' '.join(cmd)}", flush=True)
        with log_path.open("w") as log:
            try:
                proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        entry = {"command": " ".join(cmd), "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
                 "log": str(log_path)}
        self.report["stages"][name] = entry
        self.save()
        if rc != 0:
            tail = log_path.read_text()[-1500:]
            raise CheckFailed(f"stage {name} failed ({rc}); log {log_path}:\n{tail}")
        return entry

    def save(self) -> None:
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2) + "\n")


def _torchrun(nproc: int, *lapa_args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "lapa.cli", *lapa_args]


def _run_summary(run_dir: Path) -> dict:
    """Loss and throughput of a training run (metrics.jsonl) and how its batch was spread (checkpoint)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    pointer = (run_dir / "checkpoints" / "LATEST").read_text().strip()
    doc = json.loads((run_dir / "checkpoints" / pointer / "config.json").read_text())
    rate = [r.get("samples_per_s") or r.get("pairs_per_s") for r in rows[1:]] or [None]
    return {"first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"], "steps": rows[-1]["step"],
            "samples_per_s_last_window": rate[-1], "scale": doc.get("provenance", {}).get("scale")}


def check_scale(name: str, summary: dict, nproc: int, bf16: bool) -> None:
    """A training stage really ran as asked: on every process, on the GPU, in bf16 where the GPU has it."""
    scale = summary.get("scale") or {}
    want = {"world_size": nproc, "device": "cuda", "precision": "bf16" if bf16 else "fp32"}
    got = {k: scale.get(k) for k in want}
    if got != want:
        raise CheckFailed(f"stage {name} ran as {got}, expected {want} (checkpoint provenance.scale)")
    if summary["final_loss"] is None or not summary["final_loss"] < summary["first_loss"]:
        raise CheckFailed(f"stage {name}: the loss did not fall ({summary['first_loss']} -> {summary['final_loss']})")


def trt_latency(engine_dir: Path, runs: int) -> dict:
    """Batch-1 latency of the engine through TrtRunner (host arrays in and out, as the server uses it)."""
    import numpy as np

    from export.metadata import ENGINE_FILE, read_metadata
    from export.trt_policy import TrtRunner
    from lapa.action import fake_state

    runner = TrtRunner(engine_dir / ENGINE_FILE)
    meta = read_metadata(engine_dir)
    h, w = meta.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    text = rng.normal(size=(1, meta.text_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    state = fake_state(1, seed=0) if meta.state_dim else None
    for _ in range(20):
        runner.run(images, text, state)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(images, text, state)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"runs": runs, "batch": 1, "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "hz_median": float(1e3 / np.median(ms))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check")
    p.add_argument("--steps", type=int, default=300, help="training steps per preset")
    p.add_argument("--nproc", type=int, default=0, help="processes per node (default: every visible GPU)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16, help="per-device batch")
    p.add_argument("--latency-runs", type=int, default=500)
    p.add_argument("--stage-timeout-s", type=float, default=3600)
    p.add_argument("--preflight-only", action="store_true", help="only check that a CUDA GPU is usable")
    args = p.parse_args()

    report: dict = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ok": False, "stages": {}}
    try:
        report["machine"] = gpu_preflight()
    except CheckFailed as err:
        print(f"[gpu-check] FAILED: {err}", file=sys.stderr)
        return 3
    if args.preflight_only:
        print(json.dumps(report["machine"], indent=2))
        return 0
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    run = Runner(out, report)
    nproc = args.nproc or len(report["machine"]["gpus"])
    bf16 = all(g["bf16"] for g in report["machine"]["gpus"][:nproc])
    T = args.stage_timeout_s
    lapa = [sys.executable, "-m", "lapa.cli"]
    common = ["--device", "cuda", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--ckpt-every", str(args.steps)]
    report["nproc_per_node"] = nproc
    try:
        data = out / "data"
        run.stage("data", [*lapa, "sim", "record", "--episodes", str(args.episodes), "--out", str(data),
                           "--image-size", "128"], T)
        report["results"] = {}
        for preset in LAQ_PRESETS:
            name = f"laq_{preset}"
            run.stage(name, _torchrun(nproc, "laq", "train", "--data", str(data), "--preset", preset,
                                      "--out", str(out / name), "--workers", "4", *common), T)
            report["results"][name] = _run_summary(out / name)
            check_scale(name, report["results"][name], nproc, bf16)
        labels = out / "labels.parquet"
        run.stage("label", [*lapa, "laq", "label", "--ckpt", str(out / "laq_tiny"), "--data", str(data),
                            "--out", str(labels)], T)
        for preset in VLA_PRESETS:
            pre, fine = f"pretrain_{preset}", f"finetune_{preset}"
            run.stage(pre, _torchrun(nproc, "train", "pretrain", "--labels", str(labels), "--preset", preset,
                                     "--out", str(out / pre), *common), T)
            report["results"][pre] = _run_summary(out / pre)
            check_scale(pre, report["results"][pre], nproc, bf16)
            run.stage(fine, _torchrun(nproc, "train", "finetune", "--init", str(out / pre), "--data", str(data),
                                      "--preset", preset, "--out", str(out / fine), *common), T)
            report["results"][fine] = _run_summary(out / fine)
            check_scale(fine, report["results"][fine], nproc, bf16)
        exported = out / "export_tiny"
        ckpt = (out / "finetune_tiny" / "checkpoints" / (out / "finetune_tiny" / "checkpoints" / "LATEST")
                .read_text().strip())
        run.stage("export", [*lapa, "export", "onnx", "--ckpt", str(ckpt), "--out", str(exported)], T)
        run.stage("tensorrt", [*lapa, "export", "tensorrt", "--onnx", str(exported), "--fp16"], T)
        from export.metadata import ENGINE_FILE
        from export.tensorrt_build import sidecar_path

        sidecar = json.loads(sidecar_path(exported / ENGINE_FILE).read_text())  # parity, GPU, TensorRT version
        report["tensorrt"] = {"parity": sidecar.get("parity"), "tensorrt": sidecar.get("tensorrt"),
                              "gpu": sidecar.get("gpu")}
        t0 = time.perf_counter()
        report["tensorrt"]["latency"] = trt_latency(exported, args.latency_runs)
        report["stages"]["trt_latency"] = {"seconds": round(time.perf_counter() - t0, 1), "returncode": 0}
        report["ok"] = True
    except CheckFailed as err:
        report["error"] = str(err)
        print(f"[gpu-check] FAILED: {err}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - the report must say what broke, whatever it was
        report["error"] = f"{type(err).__name__}: {err}"
        print(f"[gpu-check] FAILED: {report['error']}", file=sys.stderr)
    report["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run.save()
    print(f"[gpu-check] report: {out / 'report.json'} ({'ok' if report['ok'] else 'FAILED'})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
