"""Training past one process: real `torchrun` runs (2 processes, gloo on 127.0.0.1) against one process.

- 2 processes with per-device batch 4 against 1 process with batch 4 x 2 accumulation steps: the
  same global batch split the same way, so the loss curves agree to float rounding (rtol 1e-4).
  Against 1 process with one batch of 8 they agree to rtol 2e-2: the masked action loss is
  normalised per micro-batch (as DDP averages per-rank means), not over the global batch.
- FSDP2 against the same: its first steps to rtol 1e-4, the whole curve to 2e-2 (reduce-scatter rounds
  differently, and Adam's first steps turn that into full-size updates of parameters with ~0 gradient).
- DDP and FSDP2 checkpoints load in one process and resume across world sizes (2 -> 1, 1 -> 2).
- Ranks that disagree on the configuration or the data stop with a clear error, before writing anything.
- Only rank 0 writes checkpoints and metrics; LAQ, latent pretraining, streamed finetuning and VPT all
  run under torchrun.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lapa.checkpoint import load_training_state
from lapa.policy.checkpoint_io import load_vla
from lapa.sim.record import record_dataset

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150
STEPS = 4

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def robot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "robot"
    record_dataset("default", 3, root, seed=7, image_size=32, progress=False)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LAPA_INDEX_CACHE": str(tmp / "index"),
            "HF_HUB_OFFLINE": "1"}


def _train_args(robot: Path, out: Path, steps: int = STEPS, *extra: str) -> list[str]:
    return ["train", "action-pretrain", "--data", str(robot), "--out", str(out), "--steps", str(steps),
            "--image-size", "32", "--patch-size", "8", "--chunk-size", "2", "--num-bins", "16", "--log-every", "1",
            "--ckpt-every", "2", "--threads", "1", "--device", "cpu", *extra]


def run_lapa(args: list[str], tmp: Path, nproc: int = 1, script: Path | None = None) -> subprocess.CompletedProcess:
    """`lapa ARGS` in one process, or under torchrun with `nproc` gloo processes on loopback."""
    if nproc == 1 and script is None:
        cmd = [sys.executable, "-m", "lapa.cli", *args]
    else:
        target = [str(script)] if script is not None else ["-m", "lapa.cli"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), *target, *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=TIMEOUT_S)


def _ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    start = proc.stdout.index("{")
    return json.loads(proc.stdout[start:proc.stdout.rindex("}") + 1])


def _losses(out: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def _adam_steps(ckpt: Path) -> set[float]:
    from lapa.policy.train import TrainOptions, _optimizer

    model, _, _ = load_vla(ckpt)
    opt = _optimizer(model, TrainOptions())  # the training's two parameter groups
    load_training_state(ckpt, opt)
    return {float(s["step"]) for s in opt.state_dict()["state"].values()}


def test_two_processes_follow_one_process_with_the_same_global_batch(robot: Path, tmp_path: Path) -> None:
    two = _ok(run_lapa(_train_args(robot, tmp_path / "ddp", STEPS, "--batch-size", "4"), tmp_path, nproc=2))
    accum = _ok(run_lapa(_train_args(robot, tmp_path / "accum", STEPS, "--batch-size", "4", "--grad-accum", "2"),
                         tmp_path))
    one = _ok(run_lapa(_train_args(robot, tmp_path / "one", STEPS, "--batch-size", "8"), tmp_path))
    assert two["steps"] == accum["steps"] == one["steps"] == STEPS

    steps, ddp = _losses(tmp_path / "ddp")
    assert steps == list(range(1, STEPS + 1)), "one metrics line per step: rank 0 alone writes"
    assert ddp == pytest.approx(_losses(tmp_path / "accum")[1], rel=1e-4)
    assert ddp == pytest.approx(_losses(tmp_path / "one")[1], rel=2e-2)
    assert ddp[-1] < ddp[0], "the loss falls"

    # the checkpoint loads in one process and states how the batch was made
    ckpt = Path(two["checkpoint"])
    model, config, tokenizer = load_vla(ckpt)
    assert tokenizer is not None and config.image_size == 32
    scale = json.loads((ckpt / "config.json").read_text())["provenance"]["scale"]
    assert scale == {"world_size": 2, "per_device_batch": 4, "grad_accum": 1, "global_batch": 8,
                     "parallel": "ddp", "device": "cpu", "precision": "fp32"}
    assert _adam_steps(ckpt) == {float(STEPS)}
    leftovers = [p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == [], "no half-written checkpoint directories"


def test_resume_two_processes_in_one_and_one_in_two(robot: Path, tmp_path: Path) -> None:
    half = STEPS // 2
    # 2 -> 1
    _ok(run_lapa(_train_args(robot, tmp_path / "a", half, "--batch-size", "4"), tmp_path, nproc=2))
    a = _ok(run_lapa(_train_args(robot, tmp_path / "a", STEPS, "--batch-size", "8", "--resume"), tmp_path))
    assert a["start_step"] == half and a["steps"] == STEPS
    assert _losses(tmp_path / "a")[0] == list(range(1, STEPS + 1))
    assert _adam_steps(Path(a["checkpoint"])) == {float(STEPS)}
    # 1 -> 2, sharded with FSDP2 on the way: the optimizer state is re-sharded from the full one
    _ok(run_lapa(_train_args(robot, tmp_path / "b", half, "--batch-size", "8"), tmp_path))
    b = _ok(run_lapa(_train_args(robot, tmp_path / "b", STEPS, "--batch-size", "4", "--resume", "--parallel",
                                 "fsdp"), tmp_path, nproc=2))
    assert b["start_step"] == half and b["steps"] == STEPS
    assert _adam_steps(Path(b["checkpoint"])) == {float(STEPS)}
    # both continued the same 1-process-equivalent run: their curves after the resume agree closely
    assert _losses(tmp_path / "a")[1][half:] == pytest.approx(_losses(tmp_path / "b")[1][half:], rel=2e-2)
    scale = json.loads((Path(b["checkpoint"]) / "config.json").read_text())["provenance"]["scale"]
    assert scale["parallel"] == "fsdp" and scale["world_size"] == 2 and scale["global_batch"] == 8


def test_fsdp_matches_ddp(robot: Path, tmp_path: Path) -> None:
    fsdp = _ok(run_lapa(_train_args(robot, tmp_path / "fsdp", STEPS, "--batch-size", "4", "--parallel", "fsdp"),
                        tmp_path, nproc=2))
    accum = _ok(run_lapa(_train_args(robot, tmp_path / "accum", STEPS, "--batch-size", "4", "--grad-accum", "2"),
                         tmp_path))
    # reduce-scatter rounds differently from one process's sum; Adam's first steps turn that into
    # full-size updates of parameters whose gradient is ~0, hence a looser match than DDP's
    steps, losses = _losses(tmp_path / "fsdp")
    assert losses[:2] == pytest.approx(_losses(tmp_path / "accum")[1][:2], rel=1e-4)
    assert losses == pytest.approx(_losses(tmp_path / "accum")[1], rel=2e-2)
    sharded, _, _ = load_vla(Path(fsdp["checkpoint"]))  # gathered to full tensors by rank 0
    single, _, _ = load_vla(Path(accum["checkpoint"]))
    lr, steps_taken = 3e-4, STEPS  # an Adam step moves a parameter by about lr at most
    for (name, a), b in zip(sharded.state_dict().items(), single.state_dict().values(), strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=2 * lr * steps_taken), name


@pytest.mark.parametrize(("skew", "part"), [(["--lr", "0.001"], "options"), (["--data", "{robot}", "{robot}"],
                                                                         "training data")])
def test_ranks_that_disagree_on_the_config_or_data_stop_with_a_clear_error(robot: Path, tmp_path: Path, skew, part):
    script = tmp_path / "skewed.py"
    skew = [a.format(robot=robot) for a in skew]
    script.write_text(
        "import os, sys\n"
        "from lapa.cli import main\n"
        f"args = sys.argv[1:] + ({skew!r} if os.environ['RANK'] == '1' else [])\n"
        "sys.exit(main(args))\n")
    proc = run_lapa(_train_args(robot, tmp_path / "skewed", 2, "--batch-size", "2"), tmp_path, nproc=2,
                    script=script)
    assert proc.returncode != 0
    assert "the ranks disagree on the training setup" in proc.stderr
    assert re.search(rf"rank 1 differs from rank 0 in [^;\n]*{part}", proc.stderr), proc.stderr[-2000:]
    assert not (tmp_path / "skewed" / "checkpoints").exists(), "nothing is written before the check"


def test_only_rank_0_writes_checkpoints_and_metrics(robot: Path, tmp_path: Path) -> None:
    spy = tmp_path / "spy"
    spy.mkdir()
    script = tmp_path / "spied.py"
    script.write_text(
        "import os, sys\n"
        "import lapa.policy.checkpoint_io as io\n"
        "import lapa.training as training\n"
        "from lapa.cli import main\n"
        f"SPY = {str(spy)!r}\n"
        "def spied(module, name):\n"
        "    real = getattr(module, name)\n"
        "    def call(*a, **k):\n"
        "        with open(os.path.join(SPY, name + '_rank' + os.environ['RANK']), 'a') as f:\n"
        "            f.write('x')\n"
        "        return real(*a, **k)\n"
        "    setattr(module, name, call)\n"
        "spied(io, 'save_checkpoint')\n"
        "spied(training, 'commit_checkpoint')\n"
        "spied(training, 'truncate_metrics')\n"
        "sys.exit(main(sys.argv[1:]))\n")
    _ok(run_lapa(_train_args(robot, tmp_path / "run", STEPS, "--batch-size", "2"), tmp_path, nproc=2, script=script))
    written = {p.name: len(p.read_text()) for p in spy.iterdir()}
    # checkpoints at steps 2 and 4: model files and training state written twice, by rank 0 only
    assert written == {"save_checkpoint_rank0": 2, "commit_checkpoint_rank0": 2, "truncate_metrics_rank0": 1}


def test_laq_trains_under_torchrun_with_ddp_and_fsdp_and_resumes_in_one_process(robot: Path, tmp_path: Path) -> None:
    from lapa.laq.model import LAQ

    def args(out: Path, steps: int, *extra: str) -> list[str]:
        return ["laq", "train", "--data", str(robot), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
                "--gap-s", "0.2", "--workers", "0", "--ckpt-every", "10", "--threads", "1", "--device", "cpu",
                "--grad-accum", "2", *extra]

    rows = {}
    for kind in ("ddp", "fsdp"):  # 10 steps: dead-code replacement runs at step 10
        out = _ok(run_lapa(args(tmp_path / kind, 10, "--parallel", kind), tmp_path, nproc=2))
        assert out["steps"] == 10
        ckpt = Path(out["checkpoint_dir"])
        assert LAQ.from_checkpoint(ckpt).num_params() > 0  # full tensors, gathered by rank 0 under FSDP
        scale = json.loads((ckpt / "config.json").read_text())["provenance"]["scale"]
        assert scale["global_batch"] == 2 * 2 * 2 and scale["parallel"] == kind
        rows[kind] = [json.loads(line) for line in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows[kind]] == [10], "one line (log every 10 steps), by rank 0 alone"
        # the code usage counts the global batch: 10 steps x 8 pairs at every token position
        usage = rows[kind][0]["usage"]
        assert sum(sum(row) for row in usage) == 10 * 8 * len(usage)
    # the codebook stays whole and in step on every rank under FSDP too: both runs replace alike
    assert rows["fsdp"][0]["codes_replaced"] == rows["ddp"][0]["codes_replaced"]
    assert rows["fsdp"][0]["loss"] == pytest.approx(rows["ddp"][0]["loss"], rel=1e-2)
    resumed = _ok(run_lapa(args(tmp_path / "fsdp", 11, "--resume"), tmp_path))  # 2 sharded processes -> 1
    assert resumed["start_step"] == 10 and resumed["steps"] == 11


def test_latent_pretraining_and_streamed_finetuning_run_under_torchrun(robot: Path, tmp_path: Path) -> None:
    from lapa.cli import main as lapa_main

    laq, labels = tmp_path / "laq", tmp_path / "labels.parquet"
    assert lapa_main(["laq", "train", "--data", str(robot), "--out", str(laq), "--batch-size", "4", "--workers", "0",
                      "--steps", "1", "--threads", "1", "--device", "cpu"]) == 0
    assert lapa_main(["laq", "label", "--ckpt", str(laq), "--data", str(robot), "--out", str(labels)]) == 0
    small = ["--image-size", "32", "--patch-size", "8", "--chunk-size", "2", "--num-bins", "16", "--device", "cpu",
             "--batch-size", "2", "--steps", "2", "--threads", "1"]
    pre = _ok(run_lapa(["train", "pretrain", "--labels", str(labels), "--out", str(tmp_path / "pre"), *small,
                        "--grad-accum", "2"], tmp_path, nproc=2))
    assert pre["steps"] == 2
    fine = _ok(run_lapa(["train", "finetune", "--init", str(tmp_path / "pre"), "--data", str(robot), "--out",
                         str(tmp_path / "fine"), *small, "--stream", "--workers", "1"], tmp_path, nproc=2))
    _, config, tokenizer = load_vla(Path(fine["checkpoint"]))
    assert config.head == "action" and tokenizer is not None
    # each rank decodes only its own samples of the streamed global batch, and trains on exactly what the
    # in-memory set gives it
    _ok(run_lapa(["train", "finetune", "--init", str(tmp_path / "pre"), "--data", str(robot), "--out",
                  str(tmp_path / "fine_memory"), *small], tmp_path, nproc=2))
    assert _losses(tmp_path / "fine")[1] == pytest.approx(_losses(tmp_path / "fine_memory")[1], rel=1e-6)


def test_vpt_runs_under_torchrun_with_its_idm_made_once(robot: Path, tmp_path: Path) -> None:
    small = ["--image-size", "32", "--patch-size", "8", "--chunk-size", "2", "--num-bins", "16", "--device", "cpu",
             "--batch-size", "2", "--steps", "2", "--threads", "1"]
    vpt = _ok(run_lapa(["train", "vpt", "--labelled", str(robot), "--videos", str(robot), "--idm-steps", "3",
                        "--idm-batch-size", "4", "--out", str(tmp_path / "vpt"), *small], tmp_path, nproc=2))
    assert vpt["steps"] == 2
    assert (tmp_path / "vpt" / "idm" / "config.json").is_file()  # made once, by rank 0
    assert (tmp_path / "vpt" / "pseudo_actions.parquet").is_file()


def test_bf16_precision_on_the_cpu_trains_and_is_recorded(robot: Path, tmp_path: Path) -> None:
    """--precision bf16: autocast on the CPU, fp32 parameters in the checkpoint, the loss close to fp32's."""
    half = _ok(run_lapa(_train_args(robot, tmp_path / "bf16", STEPS, "--batch-size", "8", "--precision", "bf16"),
                        tmp_path))
    full = _ok(run_lapa(_train_args(robot, tmp_path / "fp32", STEPS, "--batch-size", "8"), tmp_path))
    assert half["steps"] == full["steps"] == STEPS
    assert _losses(tmp_path / "bf16")[1] == pytest.approx(_losses(tmp_path / "fp32")[1], rel=5e-2)
    ckpt = Path(half["checkpoint"])
    assert json.loads((ckpt / "config.json").read_text())["provenance"]["scale"]["precision"] == "bf16"
    model, _, _ = load_vla(ckpt)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    bad = run_lapa(_train_args(robot, tmp_path / "bad", STEPS, "--precision", "fp8"), tmp_path)
    assert bad.returncode != 0 and "--precision" in bad.stderr
