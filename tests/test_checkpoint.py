"""Checkpoint I/O: round trips, clear errors on bad files, tied tensors, optimizer + RNG state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lapa.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_state_strict,
    load_training_state,
    restore_rng_state,
    save_checkpoint,
    save_training_state,
)
from lapa.errors import UserError
from lapa.laq.config import LAQConfig
from lapa.laq.model import LAQ


@pytest.fixture(scope="module")
def cfg() -> LAQConfig:
    return LAQConfig.preset("tiny")


def _model(cfg: LAQConfig, seed: int = 0) -> LAQ:
    torch.manual_seed(seed)
    return LAQ(cfg).eval()


def test_laq_round_trip_gives_identical_outputs(tmp_path: Path, cfg: LAQConfig) -> None:
    model = _model(cfg)
    model.nsvq.usage_since_reset += 3  # buffers travel too
    model.save(tmp_path / "ckpt", extra={"step": 7, "provenance": {"stage": "laq"}})
    loaded = LAQ.from_checkpoint(tmp_path / "ckpt")
    x = cfg.fake_inputs(2, seed=5)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.codes, b.codes)
    assert loaded.nsvq.usage_since_reset.tolist() == [3] * cfg.codebook_size
    assert loaded.config == cfg
    doc, state = load_checkpoint(tmp_path / "ckpt")
    assert doc["step"] == 7 and doc["provenance"] == {"stage": "laq"} and doc["model_type"] == "laq"
    assert set(state) == set(model.state_dict())
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path: Path, cfg: LAQConfig) -> None:
    save_checkpoint(tmp_path / "ckpt", _model(cfg, 0), {"v": 1})
    second = _model(cfg, 1)
    save_checkpoint(tmp_path / "ckpt", second, {"v": 2})
    doc, state = load_checkpoint(tmp_path / "ckpt")
    assert doc == {"v": 2}
    assert torch.equal(state["nsvq.codebook"], second.nsvq.codebook.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_extra_may_not_shadow_config(tmp_path: Path, cfg: LAQConfig) -> None:
    with pytest.raises(ValueError, match="collides"):
        save_checkpoint(tmp_path / "c", _model(cfg), {"step": 1}, extra={"step": 2})
    assert not (tmp_path / "c").exists()


def test_truncated_safetensors_is_a_checkpoint_error(tmp_path: Path, cfg: LAQConfig) -> None:
    _model(cfg).save(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "ckpt")


def test_garbage_safetensors_is_a_checkpoint_error(tmp_path: Path, cfg: LAQConfig) -> None:
    _model(cfg).save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\x00" * 8 + b"not a header at all")
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        LAQ.from_checkpoint(tmp_path / "ckpt")


def test_invalid_json_and_missing_files(tmp_path: Path, cfg: LAQConfig) -> None:
    _model(cfg).save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*invalid JSON"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json.*not found"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    assert issubclass(CheckpointError, UserError)  # the CLI prints it as one line


def test_mismatched_tensors_are_named(tmp_path: Path, cfg: LAQConfig) -> None:
    _model(cfg).save(tmp_path / "ckpt")
    _, state = load_checkpoint(tmp_path / "ckpt")
    bigger = LAQ(LAQConfig.preset("tiny", codebook_size=16))
    expected = r"shape mismatch: .*nsvq\.codebook \(checkpoint \(8, 32\), model \(16, 32\)\)"
    with pytest.raises(CheckpointError, match=expected):
        load_state_strict(bigger, state)
    del state["to_pixels.bias"]
    state["extra.weight"] = torch.zeros(1)
    model = _model(cfg)
    with pytest.raises(CheckpointError, match=r"missing: to_pixels\.bias; unexpected: extra\.weight"):
        load_state_strict(model, state)


def test_wrong_model_type_is_rejected(tmp_path: Path, cfg: LAQConfig) -> None:
    save_checkpoint(tmp_path / "ckpt", _model(cfg), {"model_type": "policy"})
    with pytest.raises(CheckpointError, match="not an LAQ checkpoint"):
        LAQ.from_checkpoint(tmp_path / "ckpt")


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight  # tied, as in language-model heads
        self.register_buffer("view", self.emb.weight.detach()[1:3], persistent=True)  # shares storage


def test_tied_and_shared_tensors_round_trip(tmp_path: Path) -> None:
    model = Tied()
    save_checkpoint(tmp_path / "ckpt", model, {})
    _, state = load_checkpoint(tmp_path / "ckpt")
    assert set(state) == {"emb.weight", "head.weight", "view"}
    assert torch.equal(state["head.weight"], model.emb.weight.detach())
    assert torch.equal(state["view"], model.emb.weight.detach()[1:3])
    fresh = Tied()
    load_state_strict(fresh, state)
    assert torch.equal(fresh.head.weight, model.head.weight) and fresh.head.weight is fresh.emb.weight


def _trained_adam(seed: int = 0) -> tuple[nn.Module, torch.optim.Adam]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(5, 3)).square().mean().backward()
        opt.step()
    return net, opt


def test_training_state_round_trip(tmp_path: Path) -> None:
    net, opt = _trained_adam()
    save_training_state(tmp_path, opt, step=2, rng_state=capture_rng_state(), extra={"note": "x", "t": (1, 2)})
    fresh = torch.optim.Adam(net.parameters(), lr=5.0)
    ts = load_training_state(tmp_path, fresh)
    assert ts.step == 2 and ts.extra == {"note": "x", "t": (1, 2)}
    saved, loaded = opt.state_dict(), fresh.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]  # lr 1e-3 and betas tuple restored
    assert loaded["param_groups"][0]["betas"] == (0.9, 0.99)
    for pid, s in saved["state"].items():
        for key, value in s.items():
            assert torch.equal(loaded["state"][pid][key], value), (pid, key)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_rng_state_round_trip(tmp_path: Path) -> None:
    _, opt = _trained_adam()
    save_training_state(tmp_path, opt, step=1, rng_state=capture_rng_state())
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    restore_rng_state(load_training_state(tmp_path).rng_state)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_optimizer_mismatch_is_a_checkpoint_error(tmp_path: Path) -> None:
    _, opt = _trained_adam()
    save_training_state(tmp_path, opt, step=2)
    other = torch.optim.Adam(nn.Linear(3, 3).parameters())
    with pytest.raises(CheckpointError, match="optimizer"):
        load_training_state(tmp_path, other)


def test_corrupt_training_state(tmp_path: Path) -> None:
    _, opt = _trained_adam()
    save_training_state(tmp_path, opt, step=2)
    doc = json.loads((tmp_path / "training_state.json").read_text())
    del doc["step"]
    (tmp_path / "training_state.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="training_state.json"):
        load_training_state(tmp_path)
    (tmp_path / "optimizer.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        load_training_state(tmp_path)
