"""Where a model directory keeps its intent preview (lapa/policy/intent.py), readable without torch.

    <model>/config.json     the policy; `vla.latent_head: true` when it keeps a latent-action head
                            beside its action head (lapa train latent-head)
    <model>/intent/laq/     the LAQ whose codes that head predicts (its decoder draws the frames)
    <model>/intent/latent/  optional: a separate stage-2 model, for a policy without its own latent head
"""

from __future__ import annotations

import json
from pathlib import Path

INTENT_DIR = "intent"
LATENT_DIR = "latent"
LAQ_DIR = "laq"


def keeps_latent_head(model_dir: str | Path) -> bool:
    """Whether the checkpoint in `model_dir` is a policy with a latent head beside its action head."""
    try:
        doc = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    vla = doc.get("vla") if isinstance(doc, dict) else None
    return isinstance(vla, dict) and vla.get("head") == "action" and vla.get("latent_head") is True


def has_intent(model_dir: str | Path | None) -> bool:
    """Whether a model directory carries an intent preview: the LAQ, and a latent head (its own or a
    separate stage-2 model)."""
    if model_dir is None:
        return False
    d = Path(model_dir) / INTENT_DIR
    if not (d / LAQ_DIR / "config.json").is_file():
        return False
    return keeps_latent_head(model_dir) or (d / LATENT_DIR / "config.json").is_file()
