"""LAQ training loop: exact resume, metrics + plots, dead-code schedule, an overfit sanity check."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from lapa.checkpoint import CheckpointError, load_training_state
from lapa.errors import UserError
from lapa.laq.config import LAQConfig
from lapa.laq.model import LAQ
from lapa.laq.train import train_laq
from lapa.training import latest_checkpoint


@pytest.fixture(scope="module")
def cfg() -> LAQConfig:
    return LAQConfig.preset("tiny")


def moving_squares(batch: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(B, 2, H, W, 3) uint8 pairs: a coloured square on grey that moves a few pixels."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.full((batch, 2, size, size, 3), 96, dtype=torch.uint8)
    side = size // 4
    for b in range(batch):
        y, x = torch.randint(side, size - 2 * side, (2,), generator=gen).tolist()
        dy, dx = torch.randint(-side // 2, side // 2 + 1, (2,), generator=gen).tolist()
        colour = torch.randint(128, 256, (3,), generator=gen, dtype=torch.int64).to(torch.uint8)
        frames[b, 0, y:y + side, x:x + side] = colour
        frames[b, 1, y + dy:y + dy + side, x + dx:x + dx + side] = colour
    return frames


def _batches(seed: int = 0, batch: int = 4):
    """A deterministic stream, batch k depends only on k (so a resumed run can skip ahead)."""
    return (moving_squares(batch, seed=seed + k) for k in itertools.count())


def _metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_steps_then_resume_to_four_matches_an_uninterrupted_run(tmp_path: Path, cfg: LAQConfig) -> None:
    kw = dict(progress=False, log_every=1, ckpt_every=2)
    first = train_laq(cfg, _batches(), 2, tmp_path / "run", **kw)
    assert first.steps == 2 and first.start_step == 0
    assert first.checkpoint_dir == latest_checkpoint(tmp_path / "run") == tmp_path / "run/checkpoints/step_00000002"

    seen = []
    stream = itertools.islice(_batches(), 2, None)  # the batches of steps 3 and 4
    resumed = train_laq(cfg, stream, 4, tmp_path / "run", resume=True, on_step=lambda s, i: seen.append(s), **kw)
    assert resumed.start_step == 2 and resumed.steps == 4 and seen == [3, 4]
    assert resumed.pairs_per_s > 0 and resumed.final_loss > 0

    run = tmp_path / "run"
    assert [r["step"] for r in _metric_rows(run)] == [1, 2, 3, 4]
    assert (run / "loss.png").stat().st_size > 1000 and (run / "code_usage.png").stat().st_size > 1000
    row = _metric_rows(run)[-1]
    assert len(row["perplexity"]) == cfg.latent_seq_len and len(row["usage"][0]) == cfg.codebook_size

    # the optimizer continued: Adam's per-parameter step count is 4, not 2
    model = LAQ.from_checkpoint(resumed.checkpoint_dir)
    opt = torch.optim.Adam(model.parameters())
    state = load_training_state(resumed.checkpoint_dir, opt)
    assert state.step == 4
    assert {float(s["step"]) for s in opt.state_dict()["state"].values()} == {4.0}

    # and the result is the one an uninterrupted run reaches
    straight = train_laq(cfg, _batches(), 4, tmp_path / "straight", **kw)
    reference = LAQ.from_checkpoint(straight.checkpoint_dir)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # bit for bit: RNG, optimizer and code-usage window restored


def test_refuses_to_overwrite_and_checks_the_config_on_resume(tmp_path: Path, cfg: LAQConfig) -> None:
    train_laq(cfg, _batches(), 1, tmp_path, progress=False)
    with pytest.raises(UserError, match="resume"):
        train_laq(cfg, _batches(), 2, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="codebook_size"):
        train_laq(LAQConfig.preset("tiny", codebook_size=16), _batches(), 2, tmp_path, progress=False, resume=True)


def test_dead_codes_are_replaced_on_schedule(tmp_path: Path, cfg: LAQConfig) -> None:
    replaced: dict[int, float] = {}
    train_laq(cfg, _batches(batch=2), 11, tmp_path, progress=False, log_every=5, ckpt_every=100,
              on_step=lambda s, info: replaced.__setitem__(s, info["codes_replaced"]))
    assert replaced[10] > 0  # a fresh codebook is mostly unused after 10 steps
    assert all(v == 0 for s, v in replaced.items() if s != 10)
    rows = _metric_rows(tmp_path)
    assert [r["step"] for r in rows] == [5, 10, 11]
    assert rows[1]["codes_replaced"] == replaced[10]
    assert rows[2]["alive_codes"] > rows[0]["alive_codes"]  # the revived codes get used


def test_data_running_out_still_checkpoints(tmp_path: Path, cfg: LAQConfig) -> None:
    result = train_laq(cfg, [moving_squares(2)] * 3, 10, tmp_path, progress=False, ckpt_every=100)
    assert result.steps == 3
    assert result.checkpoint_dir == tmp_path / "checkpoints/step_00000003"
    assert load_training_state(result.checkpoint_dir).step == 3


@pytest.mark.slow  # ~6 s on two idle cores
def test_overfits_a_fixed_batch_of_moving_squares(tmp_path: Path, cfg: LAQConfig) -> None:
    batch = moving_squares(4, seed=123)
    result = train_laq(cfg, itertools.repeat(batch), 60, tmp_path, lr=1e-3, progress=False, log_every=10,
                       ckpt_every=1000)
    losses = [r["loss"] for r in _metric_rows(tmp_path)]
    assert len(losses) == 6
    assert losses[-1] < 0.3 * losses[0], losses
    x = batch.float() / 255
    copy_mse = float(((x[:, 0] - x[:, 1]) ** 2).mean())
    assert losses[-1] < copy_mse, (losses, copy_mse)  # better than predicting "nothing moved"
    assert result.final_loss == losses[-1]
