"""Which instruction path carries the held-out put gap: the sentence vector or the word tokens?
(experiments/policy/README.md, tenth round)

Runs the held-out put evaluation with one path of each held-out wording swapped for that of the
seen wording with the same colours ("put the X block on the Y block"):

- `seen-sentence`: the held-out word tokens, the seen wording's sentence vector;
- `seen-words`: the seen wording's word tokens, the held-out sentence vector;
- `none`: nothing swapped (the plain held-out evaluation).

    python experiments/policy/sentence_swap.py --ckpt runs/policy/X1_noise40 --swap seen-sentence

The sentence vector is the mean of the token rows (VLA._instruction); the swap replaces it inside
the model for the rows whose features came from a held-out wording.
"""

from __future__ import annotations

import argparse
import json
import re

import torch

import lapa.policy.model as vla_model
from lapa.eval.closed_loop import evaluate_checkpoint
from lapa.policy.checkpoint_io import load_vla
from lapa.policy.train import load_text_encoder, resolve_vla_checkpoint
from lapa.vocabulary import BLOCK_COLOURS

SWAPS = ("seen-sentence", "seen-words", "none")


def seen_wording(instruction: str) -> str:
    colour, target = re.findall(r"\b(" + "|".join(BLOCK_COLOURS) + r")\b", instruction)[:2]
    return f"put the {colour} block on the {target} block"


class SwappingEncoder:
    """The token-form encoder; for a held-out wording it also records whose token features the
    model's sentence vector should come from (`sentence_sources`, keyed by the bytes of the token
    features handed to the model)."""

    def __init__(self, encoder, tokens: int, swap: str) -> None:
        self.encoder, self.tokens, self.swap = encoder, tokens, swap
        self.sentence_sources: dict[bytes, torch.Tensor] = {}

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, texts: list[str]) -> torch.Tensor:
        out = []
        for text in texts:
            held = self.encoder.encode([text])[0]  # (N * dim,)
            if self.swap == "none" or text.startswith("put the "):
                out.append(held)
                continue
            seen = self.encoder.encode([seen_wording(text)])[0]
            given, sentence_from = (held, seen) if self.swap == "seen-sentence" else (seen, held)
            self.sentence_sources[given.numpy().tobytes()] = sentence_from
            out.append(given)
        return torch.stack(out)  # (B, N * dim)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--swap", choices=SWAPS, required=True)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--json", help="write the evaluation here")
    args = p.parse_args()
    path = resolve_vla_checkpoint(args.ckpt)
    tokens = load_vla(path)[1].text_tokens
    if not tokens:
        raise SystemExit(f"{path}: the model takes sentence vectors only; nothing to swap")
    encoder = SwappingEncoder(load_text_encoder(None).for_tokens(tokens), tokens, args.swap)
    original = vla_model.VLA._instruction

    def swapped(model, text_emb):
        sentence, words, pooled = original(model, text_emb)
        sources = [encoder.sentence_sources.get(row.detach().float().numpy().tobytes()) for row in text_emb]
        if any(src is not None for src in sources):  # the model's own sentence vector of the other wording
            sentence = torch.stack([original(model, src[None])[0][0] if src is not None else own
                                    for src, own in zip(sources, sentence, strict=True)])
        return sentence, words, pooled

    vla_model.VLA._instruction = swapped
    result = evaluate_checkpoint(path, "put", args.episodes, held_out=True, chunk_mode="ensemble",
                                 ensemble_decay=0.5, text_encoder=encoder, progress=True)
    task = result["tasks"]["put"]
    print(f"{args.swap}: held-out put {task['successes']}/{task['episodes']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"swap": args.swap, **result}, f, indent=1)


if __name__ == "__main__":
    main()
