"""LAQ evaluation on held-out videos: reconstruction, codebook use, and what the codes know.

- `psnr` of the predicted x_{t+H} (decoded from the hard codes) against the real one, next to
  `psnr_copy_baseline` (predicting x_{t+H} = x_t): a useful model beats copying.
- `perplexity` per latent token position (exp of the code-usage entropy; 8 means uniform use).
- `probe_accuracy`: a linear probe from one-hot codes to the sign (-, 0, +) of the true EE motion
  along x, y and z over the same gap, trained on some episodes and tested on others, against
  `chance_accuracy` (always predicting the training majority class).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lapa.data.frame_pairs import ClipCatalog, PairRecord, iter_pairs
from lapa.errors import UserError
from lapa.laq.metrics import codebook_perplexity
from lapa.laq.model import LAQ

MOTION_DEAD_ZONE_M = 0.01  # |motion| below this over the gap counts as "no motion" (class 0)
PROBE_TRAIN_FRACTION = 0.7


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a training run directory (its newest checkpoint)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    from lapa.training import latest_checkpoint

    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise UserError(f"{path} is neither a checkpoint (config.json + model.safetensors) nor a training run")
    return latest


def load_laq(path: str | os.PathLike) -> LAQ:
    model = LAQ.from_checkpoint(resolve_checkpoint(path))
    return model.eval()


@dataclass
class CodedPairs:
    """Hard codes and reconstructions for every pair of a dataset."""

    codes: np.ndarray  # (N, L) int64
    clip_ids: np.ndarray  # (N,) int64 index into catalog.refs
    motion: np.ndarray | None  # (N, 3) summed true dx, dy, dz over the gap (None without actions)
    psnr: float
    psnr_copy: float
    skipped_clips: int


def _batched(records, batch_size: int):
    batch: list[PairRecord] = []
    for r in records:
        batch.append(r)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _psnr_per_item(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mse = ((pred - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)  # (B,)
    return 10 * torch.log10(1.0 / mse)


@torch.inference_mode()
def code_dataset(model: LAQ, catalog: ClipCatalog, gap_s: float, batch_size: int = 64,
                 max_pairs: int | None = None, stride: int = 1, progress: bool = True) -> CodedPairs:
    size = model.config.image_size
    counter: dict = {}
    records = iter_pairs(catalog, size, gap_s=gap_s, stride=stride, counter=counter)
    codes, clip_ids, motion, psnrs, copies = [], [], [], [], []
    have_motion = True
    bar = tqdm(desc="coding pairs", unit="pair", disable=not progress, total=max_pairs)
    seen = 0
    for batch in _batched(records, batch_size):
        if max_pairs is not None and seen >= max_pairs:
            break
        pairs = torch.from_numpy(np.stack([r.pair for r in batch]))  # (B, 2, S, S, 3) uint8
        x_t, x_tH = pairs[:, 0], pairs[:, 1]
        c = model.encode_codes(x_t, x_tH)  # (B, L)
        pred = model.decode(x_t, c)  # (B, S, S, 3) in [0, 1]
        target = x_tH.float() / 255.0
        psnrs.append(_psnr_per_item(pred.float(), target))
        copies.append(_psnr_per_item(x_t.float() / 255.0, target))
        codes.append(c.numpy())
        for r in batch:
            clip_ids.append(r.clip_index)
            if r.action_sum is None:
                have_motion = False
            else:
                motion.append(r.action_sum[:3])
        seen += len(batch)
        bar.update(len(batch))
    bar.close()
    if not codes:
        raise UserError("no frame pairs to evaluate (are the clips shorter than the gap?)")
    return CodedPairs(
        codes=np.concatenate(codes), clip_ids=np.array(clip_ids), psnr=float(torch.cat(psnrs).mean()),
        psnr_copy=float(torch.cat(copies).mean()), skipped_clips=counter.get("skipped", 0),
        motion=np.stack(motion) if have_motion and motion else None,
    )


def motion_classes(motion: np.ndarray, dead_zone_m: float = MOTION_DEAD_ZONE_M) -> np.ndarray:
    """(N, 3) metres -> (N, 3) classes {0: negative, 1: still, 2: positive}."""
    return np.where(motion > dead_zone_m, 2, np.where(motion < -dead_zone_m, 0, 1))


def linear_probe(codes: np.ndarray, labels: np.ndarray, train_mask: np.ndarray, codebook_size: int,
                 steps: int = 300, seed: int = 0) -> tuple[float, float]:
    """Softmax regression from one-hot codes to `labels` (N,); returns (test acc, chance acc)."""
    if train_mask.all() or not train_mask.any():
        raise ValueError("the probe needs both training and test pairs")
    torch.manual_seed(seed)
    x = F.one_hot(torch.from_numpy(codes).long(), codebook_size).flatten(1).float()  # (N, L*K)
    y = torch.from_numpy(labels).long()
    train = torch.from_numpy(train_mask)
    n_classes = int(y.max()) + 1
    probe = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.Adam(probe.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(probe(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        pred = probe(x[~train]).argmax(1)
    acc = float((pred == y[~train]).float().mean())
    majority = int(torch.bincount(y[train], minlength=n_classes).argmax())
    chance = float((y[~train] == majority).float().mean())
    return acc, chance


def evaluate_laq(model: LAQ, catalog: ClipCatalog, gap_s: float = 0.6, max_pairs: int | None = None,
                 stride: int = 1, progress: bool = True) -> dict:
    coded = code_dataset(model, catalog, gap_s, max_pairs=max_pairs, stride=stride, progress=progress)
    k = model.config.codebook_size
    ppl = codebook_perplexity(torch.from_numpy(coded.codes), k)
    used = [int(np.unique(coded.codes[:, i]).size) for i in range(coded.codes.shape[1])]
    result = {
        "psnr": coded.psnr,
        "psnr_copy_baseline": coded.psnr_copy,
        "perplexity": [float(v) for v in ppl],
        "codes_used": used,
        "codebook_size": k,
        "pairs": int(len(coded.codes)),
        "skipped_clips": coded.skipped_clips,
        "gap_s": gap_s,
        "probe_accuracy": None,
        "chance_accuracy": None,
    }
    if coded.motion is not None:
        classes = motion_classes(coded.motion)  # (N, 3)
        clips = np.unique(coded.clip_ids)
        train_clips = clips[: max(1, int(round(PROBE_TRAIN_FRACTION * len(clips))))]
        train_mask = np.isin(coded.clip_ids, train_clips)
        per_axis = {}
        for axis, name in enumerate("xyz"):
            per_axis[name] = linear_probe(coded.codes, classes[:, axis], train_mask, k)
        result["probe_accuracy"] = float(np.mean([a for a, _ in per_axis.values()]))
        result["chance_accuracy"] = float(np.mean([c for _, c in per_axis.values()]))
        result["probe_per_axis"] = {n: {"accuracy": a, "chance": c} for n, (a, c) in per_axis.items()}
        result["probe_test_pairs"] = int((~train_mask).sum())
    return result
