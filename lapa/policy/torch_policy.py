"""The PyTorch backend of the Policy protocol (lapa/policy_protocol.py) over a finetuned VLA checkpoint.

Per call only the image goes through the VLA: the instruction embedding comes from an LRU cache,
so the text encoder runs once per distinct instruction. `state` in the observation (8 floats,
lapa/action.py's STATE_NAMES; 8 more per lag for a model with a state history, metadata
`state_history`, lapa/state_history.py) goes to a model with a proprio input, which needs it:
such a model was finetuned with the state, so an observation without one is refused with
PolicyInputError (the server's 422) instead of falling back to the "no state" token; a model
without state input validates and ignores it. The policy keeps no per-episode state: chunks are
replayed by the caller, so `reset()` has nothing to clear.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.action import ACTION_NAMES, fake_state
from lapa.checkpoint import MODEL_FILE, CheckpointError
from lapa.file_hash import file_sha256
from lapa.policy.checkpoint_io import load_vla
from lapa.policy.config import DECODERS
from lapa.policy.text_encoder import TEXT_ENCODER_NAME, InstructionCache, TextEncoder, instruction_encoder
from lapa.policy_protocol import REPLY_ACTIONS, REPLY_MODEL_MS, camera_images, check_observation, require_state

REPLY_BINS = "bins"  # int64 (K, 7): the action tokens the actions were decoded from


class TorchPolicy:
    """`infer(obs) -> {"actions": float32 (K, 7), "model_ms": float, "bins": int64 (K, 7)}`.

    text_encoder: anything with `encode(list[str]) -> (B, D)` and `embedding_dim` (default: the
    bundled all-MiniLM-L6-v2). num_threads: torch intra-op threads (process-wide), None = leave.
    decoder: None = the checkpoint's mode; "autoregressive" also works on a parallel bins model.
    """

    backend = "torch"

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        text_encoder: Any | None = None,
        num_threads: int | None = None,
        device: str | torch.device = "cpu",
        decoder: str | None = None,
        cache_size: int = 256,
    ) -> None:
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)
        checkpoint = Path(checkpoint)
        self.device = torch.device(device)
        self.model, self.config, self.tokenizer = load_vla(checkpoint, map_location=self.device)
        if self.config.head != "action":
            raise CheckpointError(f"{checkpoint}: a latent-pretraining VLA (no action head); "
                                  "serve a finetuned checkpoint")
        self.decoder = decoder or self.config.decoder
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.decoder == "parallel" and self.config.decoder == "autoregressive":
            raise ValueError(f"{checkpoint}: an autoregressive model cannot decode in parallel")
        if self.decoder != "parallel" and self.config.action_output == "l1":
            raise ValueError(f"{checkpoint}: an l1 (regression) model predicts the chunk in one pass: "
                             "decoder must be 'parallel'")
        encoder = text_encoder if text_encoder is not None else TextEncoder.load()
        encoder = instruction_encoder(encoder, self.config.text_tokens)
        if encoder.embedding_dim != self.config.text_input_dim:
            raise CheckpointError(f"{checkpoint}: the model takes {self.config.text_input_dim}-float instruction "
                                  f"embeddings, the text encoder makes {encoder.embedding_dim}-float ones")
        self.instructions = InstructionCache(encoder, max_size=cache_size)
        c = self.config
        self._metadata: dict[str, Any] = {
            "backend": self.backend,
            "image_size": [c.image_size, c.image_size],
            "chunk_size": c.chunk_size,
            "action_dim": c.action_dim,
            "action_names": list(ACTION_NAMES),
            "control_hz": float(c.control_hz),
            "model_hash": file_sha256(checkpoint / MODEL_FILE),
            "decoder": self.decoder,
            "num_bins": c.num_bins,
            "state_dim": c.state_input_dim,
            "state_history": list(c.state_history),
            "cameras": list(c.cameras),
            "action_output": c.action_output,
            "text_encoder": getattr(encoder, "name", TEXT_ENCODER_NAME),
            "text_tokens": c.text_tokens,
            "device": str(self.device),
            "num_threads": torch.get_num_threads(),
        }

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Validate (PolicyInputError on a malformed observation), encode, decode one chunk."""
        image, instruction, state = check_observation(obs, (self.config.image_size, self.config.image_size))
        state = require_state(state, self.config.state_input_dim)  # PolicyInputError when the model needs it
        image = camera_images(obs, image, self.config.cameras)  # (H, W, 3), or (V, H, W, 3) with a wrist camera
        if not image.flags.c_contiguous or not image.flags.writeable:
            image = image.copy()  # msgpack buffers are read-only; torch wants a writable array
        start = time.perf_counter()
        with torch.inference_mode():
            text = self.instructions.get(instruction).to(self.device).unsqueeze(0)  # (1, text_input_dim)
            images = torch.from_numpy(image).to(self.device).unsqueeze(0)  # (1[, V], H, W, 3) uint8
            states = None if state is None else torch.from_numpy(state).to(self.device).unsqueeze(0)  # (1, 8)
            bins, actions = self.model.predict_actions(images, text, decoder=self.decoder,
                                                       state=states)  # (1, K, 7) each
            bins_np = bins[0].cpu().numpy().astype(np.int64)
            actions_np = actions[0].cpu().numpy().astype(np.float32)
        model_ms = (time.perf_counter() - start) * 1000.0
        return {REPLY_ACTIONS: actions_np, REPLY_MODEL_MS: model_ms, REPLY_BINS: bins_np}

    def warmup(self, steps: int = 2) -> None:
        """Run a few calls on random inputs so the first real call is not the slow one."""
        images, text = self.config.fake_inputs(1)
        c = self.config
        state = torch.from_numpy(fake_state(1, dim=c.state_input_dim)).to(self.device) if c.state_dim else None
        with torch.inference_mode():
            for _ in range(steps):
                self.model.predict_actions(images.to(self.device), text.to(self.device), decoder=self.decoder,
                                           state=state)

    def reset(self) -> None:
        """Nothing to clear: the policy is stateless between calls (the instruction cache is kept)."""
