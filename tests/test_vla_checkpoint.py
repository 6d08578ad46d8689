"""VLA checkpoints: round trips give identical outputs; foreign or damaged checkpoints fail clearly."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from vla_fakes import fit_tokenizer

from lapa.checkpoint import CheckpointError, save_checkpoint
from lapa.policy.checkpoint_io import checkpoint_extra, load_vla, read_vla_config, save_vla
from lapa.policy.config import VLAConfig
from lapa.policy.model import VLA

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=2)


def _latent_model() -> VLA:
    torch.manual_seed(0)
    return VLA(VLAConfig.preset("tiny", **SMALL)).eval()


def _edit_config(ckpt: Path, vla: dict[str, Any] | None = None, **top: Any) -> None:
    """Change keys of a saved checkpoint's config.json: of its "vla" section and at the top level."""
    path = ckpt / "config.json"
    doc = json.loads(path.read_text())
    doc["vla"].update(vla or {})
    doc.update(top)
    path.write_text(json.dumps(doc))


def test_latent_round_trip(tmp_path):
    model = _latent_model()
    save_vla(tmp_path / "ckpt", model, model.config, None, {"provenance": {"step": 7}})
    loaded, config, tokenizer = load_vla(tmp_path / "ckpt")
    assert config == model.config and tokenizer is None and not loaded.training
    x = config.fake_inputs(2)
    with torch.no_grad():
        assert torch.equal(loaded(*x), model(*x))
    assert checkpoint_extra(tmp_path / "ckpt") == {"provenance": {"step": 7}}


@pytest.mark.parametrize("decoder", ["parallel", "autoregressive"])
def test_action_round_trip(tmp_path, decoder):
    tok = fit_tokenizer()
    model = _latent_model().replace_head_for_actions(tok, decoder=decoder).eval()
    save_vla(tmp_path / "ckpt", model, model.config, tok)
    loaded, config, tokenizer = load_vla(tmp_path / "ckpt")
    assert config.head == "action" and config.decoder == decoder and tokenizer == tok
    x = config.fake_inputs(2)
    bins, actions = model.predict_actions(*x)
    bins2, actions2 = loaded.predict_actions(*x)
    assert torch.equal(bins, bins2) and torch.equal(actions, actions2)
    doc = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert doc["model_type"] == "vla" and doc["vla"]["control_hz"] == config.control_hz
    assert "q99" in doc["action_tokenizer"]["stats"]


def test_action_model_needs_its_tokenizer(tmp_path):
    tok = fit_tokenizer()
    model = _latent_model().replace_head_for_actions(tok)
    with pytest.raises(ValueError, match="ActionTokenizer"):
        save_vla(tmp_path / "a", model, model.config, None)
    save_vla(tmp_path / "b", model, model.config, tok)
    _edit_config(tmp_path / "b", action_tokenizer=None)
    with pytest.raises(CheckpointError, match="without its action tokenizer"):
        load_vla(tmp_path / "b")


def test_not_a_vla_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "laq", nn.Linear(2, 2), {"model_type": "laq", "laq": {}})
    with pytest.raises(CheckpointError, match="not a VLA checkpoint.*'laq'"):
        load_vla(tmp_path / "laq")
    with pytest.raises(CheckpointError, match="not a VLA"):
        read_vla_config(tmp_path / "laq")
    with pytest.raises(CheckpointError, match="not found"):
        load_vla(tmp_path / "nothing")


def test_missing_tensor(tmp_path):
    model = _latent_model()
    save_vla(tmp_path / "ckpt", model)
    path = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(path))
    del state["blocks.1.mlp.fc.weight"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="missing: blocks.1.mlp.fc.weight"):
        load_vla(tmp_path / "ckpt")


def test_mismatched_shape(tmp_path):
    save_vla(tmp_path / "ckpt", _latent_model())
    _edit_config(tmp_path / "ckpt", vla={"latent_codebook_size": 16})
    with pytest.raises(CheckpointError, match=r"shape mismatch: latent_head.proj.bias \(checkpoint \(8,\)"):
        load_vla(tmp_path / "ckpt")


def test_latent_checkpoint_is_not_an_action_checkpoint(tmp_path):
    """A latent-head state dict cannot be loaded as an action model (and vice versa)."""
    save_vla(tmp_path / "ckpt", _latent_model())
    _edit_config(tmp_path / "ckpt", vla={"head": "action"}, action_tokenizer=fit_tokenizer().to_dict())
    with pytest.raises(CheckpointError, match="missing: action_head.*unexpected: latent_head"):
        load_vla(tmp_path / "ckpt")


def test_bad_config_is_a_checkpoint_error(tmp_path):
    save_vla(tmp_path / "ckpt", _latent_model())
    _edit_config(tmp_path / "ckpt", vla={"chunk_size": 99})
    with pytest.raises(CheckpointError, match="bad VLA config.*chunk_size"):
        load_vla(tmp_path / "ckpt")
