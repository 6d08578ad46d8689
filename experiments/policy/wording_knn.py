"""How far a held-out wording is from its own family's training wordings in the frozen text
encoder's space: 5-nearest-neighbour family vote over every training wording, for the basic
(templates) and the broad instruction augmentation. A proxy for whether a policy conditioned on
the sentence embedding can tell the family of an unseen wording; it needs no training.

DEV are wordings written to tune the augmentation on (never used in training, never the held-out
test paraphrases); TEST are the suite's held-out paraphrases.

    python experiments/policy/wording_knn.py --out experiments/policy/wording_knn.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from lapa.policy.text_encoder import TextEncoder
from lapa.sim.tasks import FAMILIES, sample_instance

DEV = {
    "reach": ("make your way to the {colour} block", "hover above the {colour} block"),
    "push": ("shift the {colour} block {direction}", "scoot the {colour} block {direction}"),
    "pick": ("hoist the {colour} block", "elevate the {colour} block"),
    "put": ("rest the {colour} block on the {target} block", "place the {colour} block atop the {target} block"),
}


def family_vote_accuracy(encoder: TextEncoder, families: tuple[str, ...], broad: bool, k: int = 5,
                         instances: int = 4, seed: int = 0) -> dict[str, dict[str, float]]:
    """{"dev"|"test": {family: share of wordings whose k nearest training wordings vote for it}}."""
    rng = np.random.default_rng(seed)
    train: list[tuple[str, str]] = []
    probes: dict[str, list[tuple[str, str]]] = {"dev": [], "test": []}
    for family in families:
        for _ in range(instances):
            task = sample_instance(family, rng)
            train += [(family, w) for w in task.wordings(broad)]
            slots = {"colour": task.colour, "direction": task.direction, "target": task.target}
            probes["dev"] += [(family, t.format(**slots)) for t in DEV[family]]
            probes["test"] += [(family, t.format(**slots)) for t in FAMILIES[family].held_out_templates]
    with torch.no_grad():
        bank = torch.cat([encoder.encode([w for _, w in train[i:i + 512]]) for i in range(0, len(train), 512)])
        result = {}
        for split, rows in probes.items():
            nearest = (encoder.encode([w for _, w in rows]) @ bank.T).topk(k, dim=1).indices  # (P, k)
            hits: dict[str, list[bool]] = {}
            for (family, _), idx in zip(rows, nearest.tolist(), strict=True):
                votes = [train[j][0] for j in idx]
                hits.setdefault(family, []).append(max(set(votes), key=votes.count) == family)
            result[split] = {f: float(np.mean(h)) for f, h in hits.items()}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the table as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    encoder = TextEncoder.load()
    table = {}
    for families in (("reach", "push"), ("reach", "push", "pick", "put")):
        for broad in (False, True):
            key = f"{'+'.join(families)} {'broad' if broad else 'templates'}"
            table[key] = family_vote_accuracy(encoder, families, broad)
            print(key, json.dumps(table[key]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
