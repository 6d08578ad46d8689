"""VLA checkpoints: `model.safetensors` + `config.json` through lapa/checkpoint.py.

config.json holds `model_type: "vla"` (the same discriminator the LAQ checkpoints use), the
VLAConfig under `vla` (image size, chunk size, control_hz, ...), the action tokenizer's bins and
statistics under `action_tokenizer` (null for a latent-pretraining checkpoint), the text encoder's
name, and whatever `extra` the caller adds (training provenance). The bin table is not stored as a
tensor: the model rebuilds it from `action_tokenizer`, so there is one source of truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lapa.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from lapa.policy.action_tokenizer import ActionTokenizer
from lapa.policy.config import VLAConfig
from lapa.policy.model import VLA
from lapa.policy.text_encoder import TEXT_ENCODER_NAME

VLA_MODEL_TYPE = "vla"
_RESERVED = ("model_type", "vla", "action_tokenizer", "text_encoder")


def save_vla(
    directory: str | os.PathLike,
    model: VLA,
    config: VLAConfig | None = None,
    tokenizer: ActionTokenizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a VLA checkpoint atomically. An action-head model needs its fitted tokenizer."""
    config = model.config if config is None else config
    if config != model.config:
        raise ValueError(f"config does not describe the model: {config} vs {model.config}")
    if config.head == "action" and tokenizer is None:
        raise ValueError("an action-head VLA must be saved with its ActionTokenizer")
    if tokenizer is not None and tokenizer.num_bins != config.num_bins:
        raise ValueError(f"tokenizer has {tokenizer.num_bins} bins, the config {config.num_bins}")
    doc = {
        "model_type": VLA_MODEL_TYPE,
        "vla": config.to_dict(),
        "action_tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        "text_encoder": TEXT_ENCODER_NAME,
    }
    return save_checkpoint(directory, model, doc, extra)


def read_vla_config(directory: str | os.PathLike) -> tuple[dict[str, Any], VLAConfig, ActionTokenizer | None]:
    """(config.json, VLAConfig, tokenizer or None) without building the model. CheckpointError if not a VLA."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    path = directory / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read ({err})") from err
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return _parse(directory, doc)


def _parse(directory: Path, doc: dict[str, Any]) -> tuple[dict[str, Any], VLAConfig, ActionTokenizer | None]:
    kind = doc.get("model_type")
    if kind != VLA_MODEL_TYPE or not isinstance(doc.get("vla"), dict):
        raise CheckpointError(f"{directory}: not a VLA checkpoint (model_type={kind!r}, expected 'vla')")
    try:
        config = VLAConfig.from_dict(doc["vla"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}/config.json: bad VLA config ({err})") from err
    tokenizer = None
    if doc.get("action_tokenizer") is not None:
        try:
            tokenizer = ActionTokenizer.from_dict(doc["action_tokenizer"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{directory}/config.json: bad action tokenizer ({err})") from err
        if tokenizer.num_bins != config.num_bins:
            raise CheckpointError(f"{directory}/config.json: action tokenizer has {tokenizer.num_bins} bins, "
                                  f"the model {config.num_bins}")
    if config.head == "action" and tokenizer is None:
        raise CheckpointError(f"{directory}/config.json: an action-head VLA without its action tokenizer")
    return doc, config, tokenizer


def load_vla(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[VLA, VLAConfig, ActionTokenizer | None]:
    """(model in eval mode, config, tokenizer or None for a latent-head model), or CheckpointError."""
    directory = Path(directory)
    doc, state = load_checkpoint(directory)
    _, config, tokenizer = _parse(directory, doc)
    model = VLA(config, tokenizer)
    load_state_strict(model, state, source=str(directory))
    return model.to(map_location).eval(), config, tokenizer


def checkpoint_extra(directory: str | os.PathLike) -> dict[str, Any]:
    """The caller-added keys of a VLA checkpoint's config.json (training provenance etc.)."""
    doc, _, _ = read_vla_config(directory)
    return {k: v for k, v in doc.items() if k not in _RESERVED}
