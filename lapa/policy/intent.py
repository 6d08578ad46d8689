"""Intent preview: what the policy means to do, as imagined frames, before the arm moves.

LAPA's two models of latent actions make it possible without any robot: the VLA's latent-action
head (stage 2) predicts the next latent action codes for an image and an instruction, and the LAQ
decoder (stage 1, a world model over those codes) turns the current frame and the codes into the
next frame. Rolled out (each imagined frame is the next step's input):

    image --VLA latent head--> codes_1 --LAQ decoder(image, codes_1)--> frame_1
    frame_1 --VLA latent head--> codes_2 --LAQ decoder(frame_1, codes_2)--> frame_2   ...

The latent head is the policy's own when it keeps one beside its action head (`latent_head: true`,
`lapa train latent-head`): the preview then reads the very trunk that acts. Otherwise a separate
stage-2 model of the policy's lineage stands in. The layout (lapa/intent_layout.py):

    <model>/intent/laq/      the LAQ whose codes the latent head was trained to predict
    <model>/intent/latent/   only for a policy without its own latent head: a VLA with `head: latent`

The two must agree on the codes (latent_seq_len, codebook size); `IntentModel.load` checks it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lapa.checkpoint import CheckpointError
from lapa.intent_layout import INTENT_DIR, LAQ_DIR, LATENT_DIR, has_intent, keeps_latent_head
from lapa.laq.model import LAQ
from lapa.policy.checkpoint_io import load_vla
from lapa.policy.model import VLA
from lapa.policy.text_encoder import instruction_encoder

DEFAULT_STEPS = 4
MAX_STEPS = 16


def _resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, 3) float in [0, 1] -> (B, size, size, 3) (area when shrinking, bilinear otherwise)."""
    if frames.shape[1:3] == (size, size):
        return frames
    x = frames.permute(0, 3, 1, 2)  # (B, 3, H, W)
    mode = "area" if frames.shape[1] > size else "bilinear"
    x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return x.permute(0, 2, 3, 1).clamp(0.0, 1.0)  # (B, size, size, 3)


class IntentModel:
    """`imagine(image, instruction) -> {"latent_codes": int64 (T, L), "frames": uint8 (T, h, w, 3), "model_ms"}`."""

    def __init__(self, latent_vla: VLA, laq: LAQ, text_encoder: Any, steps: int = DEFAULT_STEPS) -> None:
        if latent_vla.latent_head is None:
            raise CheckpointError("the intent preview needs a VLA with a latent-action head (head: latent, or an "
                                  "action model with latent_head: true)")
        vc, lc = latent_vla.config, laq.config
        if (vc.latent_seq_len, vc.latent_codebook_size) != (lc.latent_seq_len, lc.codebook_size):
            raise CheckpointError(f"the latent head predicts {vc.latent_seq_len} codes of {vc.latent_codebook_size}, "
                                  f"the LAQ decodes {lc.latent_seq_len} of {lc.codebook_size}: not the same codes")
        text_encoder = instruction_encoder(text_encoder, vc.text_tokens)
        if text_encoder.embedding_dim != vc.text_input_dim:
            raise CheckpointError(f"the latent VLA takes {vc.text_input_dim}-float instructions, the text encoder "
                                  f"makes {text_encoder.embedding_dim}-float ones")
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
        self.vla, self.laq, self.text_encoder, self.steps = latent_vla.eval(), laq.eval(), text_encoder, steps

    @classmethod
    def load(cls, directory: str | Path, text_encoder: Any | None = None, steps: int = DEFAULT_STEPS) -> IntentModel:
        """From a model directory with an intent preview (its own latent head, or `intent/latent/`, and
        `intent/laq/`), or an intent directory (`latent/` + `laq/`)."""
        d = Path(directory)
        intent = d / INTENT_DIR if has_intent(d) else d
        if keeps_latent_head(d) and intent != d:
            vla, _, _ = load_vla(d)
        elif (intent / LATENT_DIR).is_dir() and (intent / LAQ_DIR).is_dir():
            vla, _, _ = load_vla(intent / LATENT_DIR)
        else:
            raise CheckpointError(f"{directory}: no intent preview (a policy with a latent head, or "
                                  f"{LATENT_DIR}/, and {LAQ_DIR}/ checkpoints)")
        laq = LAQ.from_checkpoint(intent / LAQ_DIR)
        if text_encoder is None:
            from lapa.policy.text_encoder import TextEncoder

            text_encoder = TextEncoder.load()
        return cls(vla, laq, text_encoder, steps)

    @property
    def metadata(self) -> dict[str, Any]:
        lc = self.laq.config
        # "policy": the acting model's own latent head; "lineage": a separate stage-2 model of its lineage
        source = "policy" if self.vla.config.head == "action" else "lineage"
        return {"steps": self.steps, "latent_seq_len": lc.latent_seq_len, "codebook_size": lc.codebook_size,
                "frame_size": [lc.image_size, lc.image_size], "latent_head": source}

    def imagine(self, image: np.ndarray, instruction: str, steps: int | None = None) -> dict[str, Any]:
        steps = self.steps if steps is None else steps
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        start = time.perf_counter()
        vla_size, laq_size = self.vla.config.image_size, self.laq.config.image_size
        with torch.inference_mode():
            text = self.text_encoder.encode([instruction]).float()  # (1, text_input_dim)
            frame = torch.from_numpy(np.array(image, copy=True)).unsqueeze(0).float() / 255.0  # (1, H, W, 3)
            codes_out, frames_out = [], []
            for _ in range(steps):
                seen = (_resize(frame, vla_size) * 255.0).round().to(torch.uint8)  # (1, s, s, 3) as the VLA saw frames
                codes = self.vla.predict_latents(seen, text)  # (1, L)
                frame = self.laq.decode(_resize(frame, laq_size), codes)  # (1, h, w, 3) in [0, 1]
                codes_out.append(codes[0])
                frames_out.append(frame[0])
            codes_np = torch.stack(codes_out).cpu().numpy().astype(np.int64)  # (T, L)
            frames_np = (torch.stack(frames_out) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return {"latent_codes": codes_np, "frames": frames_np, "model_ms": 1e3 * (time.perf_counter() - start)}
