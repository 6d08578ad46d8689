"""Randomly initialised models in the real file layouts: their cost, not their skill.

For the benchmarks (a model of the shipped preset where none is on disk) and the tests (small
models that load, export and serve in seconds).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def random_checkpoint(directory: str | os.PathLike, preset: str = "tiny", seed: int = 0,
                      **overrides: Any) -> Path:
    """A randomly initialised action-head VLA + a tokenizer fitted on random actions, saved with save_vla."""
    import torch

    from lapa.policy.action_tokenizer import ActionTokenizer
    from lapa.policy.checkpoint_io import save_vla
    from lapa.policy.config import VLAConfig
    from lapa.policy.model import VLA

    rng = np.random.default_rng(seed)
    actions = rng.normal(0.0, 0.01, (1000, 7))
    actions[:, 3:6] *= 5.0  # radians move more than metres
    actions[:, 6] = rng.random(1000) < 0.5
    config = VLAConfig.preset(preset, **{"head": "action", **overrides})
    tokenizer = ActionTokenizer.fit_new(actions, num_bins=config.num_bins)
    torch.manual_seed(seed)
    model = VLA(config, tokenizer)
    return save_vla(directory, model.eval(), model.config, tokenizer,
                    extra={"provenance": f"random {preset} action model (bench/random_models.py), seed {seed}"})


_HF_NAMES = [  # ours -> Hugging Face BertModel names (the inverse of lapa/policy/text_encoder.py's renames)
    ("tok_emb.", "embeddings.word_embeddings."), ("pos_emb.", "embeddings.position_embeddings."),
    ("type_emb.", "embeddings.token_type_embeddings."), ("emb_norm.", "embeddings.LayerNorm."),
    (".q.", ".attention.self.query."), (".k.", ".attention.self.key."), (".v.", ".attention.self.value."),
    (".attn_out.", ".attention.output.dense."), (".attn_norm.", ".attention.output.LayerNorm."),
    (".ff_in.", ".intermediate.dense."), (".ff_out.", ".output.dense."), (".ff_norm.", ".output.LayerNorm."),
    ("layers.", "encoder.layer."),
]


def random_text_encoder(directory: str | os.PathLike, hidden: int = 32, layers: int = 1, heads: int = 2,
                        seed: int = 0) -> Path:
    """A small randomly initialised MiniLM in the bundled model's file layout, with the real tokenizer.json.

    For tests and quick benchmarks: it loads through `TextEncoder.load(dir)` like the real one and
    exports in seconds. Its embeddings mean nothing.
    """
    import shutil

    import torch
    from safetensors.torch import save_file

    from lapa.policy.text_encoder import MiniLM, MiniLMConfig, default_model_dir

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    real = default_model_dir()
    vocab = json.loads((real / "config.json").read_text())["vocab_size"]
    hf = {"model_type": "bert", "hidden_act": "gelu", "vocab_size": vocab, "hidden_size": hidden,
          "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": 2 * hidden,
          "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12}
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    shutil.copyfile(real / "tokenizer.json", directory / "tokenizer.json")
    torch.manual_seed(seed)
    model = MiniLM(MiniLMConfig.from_model_dir(directory))
    state = {}
    for name, tensor in model.state_dict().items():
        for ours, theirs in _HF_NAMES:
            name = name.replace(ours, theirs)
        state[name] = tensor.contiguous()
    save_file(state, str(directory / "model.safetensors"))
    return directory
