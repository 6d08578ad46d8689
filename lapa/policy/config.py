"""VLA hyper-parameters: one validated dataclass with a `tiny` (tests, CPU) and a `base` preset.

The same config describes both training stages: `head="latent"` is the latent-pretraining model
(stage 2, predicts `latent_seq_len` LAQ codes out of `latent_codebook_size`), `head="action"` the
finetuned policy (stage 3, predicts a chunk of `chunk_size` actions, each of `action_dim` tokens
out of `num_bins`). `decoder` fixes how the action head decodes (see lapa/policy/model.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from lapa.action import ACTION_DIM, STATE_DIM
from lapa.config_checks import check_patch_grid, check_positive_ints, from_known_keys, from_preset
from lapa.state_history import check_lags, state_input_dim

HEADS = ("latent", "action")
DECODERS = ("parallel", "autoregressive")
ENCODERS = ("patch", "conv")
ACTION_OUTPUTS = ("bins", "l1")
STATE_DIMS = (0, STATE_DIM)
MAX_CHUNK_SIZE = 8
MAX_TEXT_TOKENS = 128
CAMERA_SETS = (("scene",), ("scene", "wrist"))


@dataclass(frozen=True)
class VLAConfig:
    image_size: int = 224  # square RGB input, pixels per side (uint8 (B, H, W, 3) into the model)
    patch_size: int = 16  # -> (image_size // patch_size)^2 patch tokens
    dim: int = 384  # trunk width
    depth: int = 8  # transformer blocks
    heads: int = 6  # attention heads; dim % heads == 0
    mlp_ratio: float = 4.0
    text_dim: int = 384  # instruction embedding width (all-MiniLM-L6-v2), per token in the token form
    # instruction form: 0 = one pooled sentence vector (B, text_dim); N > 0 = the text encoder's
    # features of the first N tokens, zero-padded and flattened (B, N * text_dim), which also join the
    # prefix as N word tokens the patches and queries attend to (word order survives: who goes on whom)
    text_tokens: int = 0
    # token form only: P learned queries attend over the instruction's tokens (each learns a word's
    # role, e.g. the block to lift and the block to put it on); the P pooled vectors join the sentence
    # in every FiLM of the conv encoder (0: none)
    text_pool: int = 0
    latent_seq_len: int = 4  # LAQ latent tokens per transition
    latent_codebook_size: int = 8  # LAQ codebook entries
    chunk_size: int = 4  # K actions predicted per call
    action_dim: int = ACTION_DIM  # [dx, dy, dz, droll, dpitch, dyaw, gripper]
    num_bins: int = 256  # tokens per action dimension
    control_hz: float = 10.0  # rate at which the chunk's actions are meant to be executed
    head: str = "latent"  # "latent" (stage 2) or "action" (stage 3)
    decoder: str = "parallel"  # action decoding: "parallel" (one pass) or "autoregressive"
    # image encoder: "patch" (ViT: linear patch embedding) or "conv" (a strided conv stem with the
    # instruction FiLM-ed into every layer, one token per patch_size x patch_size cell)
    encoder: str = "patch"
    film: bool = True  # conv encoder: FiLM conditioning on the instruction after every conv layer
    # conv encoder: spatial-softmax keypoints (robomimic) of the FiLM-ed stride-4 feature map, as one
    # more prefix token: image coordinates of what the instruction selected, a short path from the
    # instruction to "where is the block" (0: none)
    keypoints: int = 0
    state_dim: int = 0  # proprio input: 0 none, 8 = EE xyz, rpy, gripper width as one token
    action_output: str = "bins"  # action head: "bins" (cross-entropy over quantile bins) or "l1"
    # l1 head: one more query that predicts where the episode's end effector ends up (xyz), an
    # auxiliary loss in training only: a dense signal that ties the instruction to its block
    goal_aux: bool = False
    # state history (lapa/state_history.py): control ticks back at which past states join the current
    # one in the state input, e.g. (3, 6, 12); () the current state only. Needs state_dim 8.
    state_history: tuple[int, ...] = ()
    # cameras, named as LeRobot's image keys (observation.images.<name>): the first is the scene
    # camera every stage sees; "wrist", the camera on the hand, only joins at finetuning. Every
    # camera goes through the same encoder; a learned camera embedding tells their patches apart.
    cameras: tuple[str, ...] = ("scene",)
    # an action model that keeps a latent-action head beside its action head: the intent preview
    # (lapa/policy/intent.py) reads the policy's own trunk; unused by acting, absent from the ONNX graph
    latent_head: bool = False

    def __post_init__(self) -> None:
        for name in ("state_history", "cameras"):
            if isinstance(getattr(self, name), list):  # from config.json
                object.__setattr__(self, name, tuple(getattr(self, name)))
        positive = ("image_size", "patch_size", "dim", "depth", "heads", "text_dim", "latent_seq_len")
        check_positive_ints(self, positive)
        check_patch_grid(self.image_size, self.patch_size)
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not isinstance(self.latent_codebook_size, int) or self.latent_codebook_size < 2:
            raise ValueError(f"latent_codebook_size must be an int >= 2, got {self.latent_codebook_size!r}")
        if not isinstance(self.chunk_size, int) or not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be an int in 1..{MAX_CHUNK_SIZE}, got {self.chunk_size!r}")
        if self.action_dim != ACTION_DIM:
            raise ValueError(f"action_dim must be {ACTION_DIM} (lapa/action.py), got {self.action_dim!r}")
        if not isinstance(self.num_bins, int) or not 2 <= self.num_bins <= 4096 or self.num_bins % 2:
            raise ValueError(f"num_bins must be an even int in 2..4096, got {self.num_bins!r}")
        if not isinstance(self.control_hz, int | float) or not 0 < self.control_hz <= 1000:
            raise ValueError(f"control_hz must be in (0, 1000], got {self.control_hz!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"the conv encoder downsamples by powers of 2: patch_size must be 2, 4, 8, ..., "
                             f"got {self.patch_size}")
        if not isinstance(self.keypoints, int) or self.keypoints < 0:
            raise ValueError(f"keypoints must be an int >= 0, got {self.keypoints!r}")
        if self.keypoints and (self.encoder != "conv" or self.patch_size < 4):
            raise ValueError("keypoints need the conv encoder with patch_size >= 4 (a stride-4 feature map)")
        if not isinstance(self.film, bool):
            raise ValueError(f"film must be a bool, got {self.film!r}")
        if self.state_dim not in STATE_DIMS:
            raise ValueError(f"state_dim must be one of {STATE_DIMS}, got {self.state_dim!r}")
        if self.action_output not in ACTION_OUTPUTS:
            raise ValueError(f"action_output must be one of {ACTION_OUTPUTS}, got {self.action_output!r}")
        if not isinstance(self.goal_aux, bool):
            raise ValueError(f"goal_aux must be a bool, got {self.goal_aux!r}")
        if not isinstance(self.text_tokens, int) or not 0 <= self.text_tokens <= MAX_TEXT_TOKENS:
            raise ValueError(f"text_tokens must be an int in 0..{MAX_TEXT_TOKENS}, got {self.text_tokens!r}")
        if not isinstance(self.text_pool, int) or not 0 <= self.text_pool <= 8:
            raise ValueError(f"text_pool must be an int in 0..8, got {self.text_pool!r}")
        if self.text_pool and not (self.text_tokens and self.encoder == "conv" and self.film):
            raise ValueError("text_pool FiLMs pooled instruction tokens into the conv encoder: it needs text_tokens, "
                             "encoder 'conv' and film")
        check_lags(self.state_history)
        if self.state_history and not self.state_dim:
            raise ValueError("state_history needs a state input (state_dim 8)")
        if self.cameras not in CAMERA_SETS:
            raise ValueError(f"cameras must be one of {CAMERA_SETS}, got {self.cameras!r}")
        if not isinstance(self.latent_head, bool):
            raise ValueError(f"latent_head must be a bool, got {self.latent_head!r}")
        if self.latent_head and self.head != "action":
            raise ValueError("latent_head keeps a latent head beside an action head: it needs head 'action'")
        if self.action_output == "l1" and self.decoder != "parallel":
            raise ValueError("the l1 action head regresses the whole chunk in one pass: decoder must be 'parallel'")

    # ------------------------------------------------------------------ derived sizes
    @property
    def state_input_dim(self) -> int:
        """Floats of the model's state input: 0, 8, or 8 per state with a history."""
        return state_input_dim(self.state_history) if self.state_dim else 0

    @property
    def text_input_dim(self) -> int:
        """Floats of the model's instruction input: text_dim, or text_tokens * text_dim in the token form."""
        return self.text_dim * max(1, self.text_tokens)

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3

    @property
    def prefix_len(self) -> int:
        """Tokens before the queries: instruction, its word tokens (if any), state (if any), keypoints
        (if any) and image patches of each camera."""
        per_camera = (1 if self.keypoints else 0) + self.num_patches
        return 1 + self.text_tokens + (1 if self.state_dim else 0) + self.num_cameras * per_camera

    @property
    def num_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def num_queries(self) -> int:
        """Latent head: one query per latent token. Bins head: one per action token (K*7). L1 head:
        one per chunk step (each regresses all 7 dimensions), plus the goal query with goal_aux."""
        if self.head == "latent":
            return self.latent_seq_len
        if self.action_output == "l1":
            return self.chunk_size + (1 if self.goal_aux else 0)
        return self.num_action_tokens

    # ------------------------------------------------------------------ presets and I/O
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> VLAConfig:
        return from_preset(PRESETS, "VLA", name, overrides)

    def replace(self, **changes: Any) -> VLAConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLAConfig:
        return from_known_keys(cls, data)

    def fake_inputs(self, batch: int = 2, seed: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (images uint8 (B, H, W, 3) or (B, V, H, W, 3) with V > 1 cameras, unit-norm text
        embeddings float32 (B, text_dim); in the token form (B, text_tokens * text_dim), unit rows
        with the last third zero, as padding).

        Random, never zeros: export parity checks on constant inputs hide bugs.
        """
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        cameras = (self.num_cameras,) if self.num_cameras > 1 else ()
        images = torch.randint(0, 256, (batch, *cameras, self.image_size, self.image_size, 3), dtype=torch.uint8,
                               generator=gen)
        rows = max(1, self.text_tokens)
        text = torch.randn(batch, rows, self.text_dim, generator=gen)
        text = text / text.norm(dim=-1, keepdim=True)  # like the sentence encoder's output
        if self.text_tokens:
            text[:, rows - rows // 3:] = 0.0  # padding rows
        return images, text.reshape(batch, self.text_input_dim)


PRESETS: dict[str, VLAConfig] = {
    # CPU: 64 patch tokens + 1 instruction token + queries; about 0.9M parameters
    "tiny": VLAConfig(image_size=64, patch_size=8, dim=128, depth=4, heads=4),
    # ViT-S-sized trunk on 224x224 images (196 patches); about 15M parameters
    "base": VLAConfig(image_size=224, patch_size=16, dim=384, depth=8, heads=6),
    # the recipe for the tabletop tasks on a CPU budget (experiments/policy/README.md): a FiLM conv
    # stem (8x8 tokens on 64x64 images) with spatial-softmax keypoints, a proprio state token, L1
    # chunk regression with the goal query
    "tabletop": VLAConfig(image_size=64, patch_size=8, dim=128, depth=4, heads=4, encoder="conv", keypoints=32,
                          state_dim=STATE_DIM, action_output="l1", goal_aux=True),
}
