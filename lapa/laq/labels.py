"""Latent action label files: the LAQ codes of every frame pair of a dataset, for stage 2.

A label file is a parquet table, one row per pair (x_t, x_{t+H}):
`source` (dataset root), `clip_index`, `frame_index` (t), `gap` (H in frames), `instruction`,
`codes` (fixed_size_list<int64>[L]). Schema metadata (`lapa`) records the LAQ checkpoint hash,
the gap in seconds, the image size, L and the codebook size, so stage 2 can check what it reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from lapa.data.frame_pairs import ClipCatalog, iter_pairs
from lapa.errors import UserError
from lapa.file_hash import file_sha256
from lapa.laq.model import LAQ

LABELS_FORMAT = "lapa-latent-labels/1"


class LabelFileError(UserError):
    """A label file that is missing, malformed, or of another format."""


@dataclass
class LatentLabels:
    sources: np.ndarray  # (N,) str
    clip_index: np.ndarray  # (N,) int64
    frame_index: np.ndarray  # (N,) int64
    gap: np.ndarray  # (N,) int64
    instructions: np.ndarray  # (N,) str
    codes: np.ndarray  # (N, L) int64
    meta: dict

    def __len__(self) -> int:
        return len(self.codes)


@torch.inference_mode()
def label_dataset(model: LAQ, checkpoint_dir: Path, data: list[str | os.PathLike], out: Path,
                  gap_s: float = 0.6, batch_size: int = 64, progress: bool = True) -> LatentLabels:
    catalog = ClipCatalog(data)
    rows: dict[str, list] = {k: [] for k in ("source", "clip_index", "frame_index", "gap", "instruction", "codes")}
    batch = []

    def flush() -> None:
        pairs = torch.from_numpy(np.stack([r.pair for r in batch]))  # (B, 2, S, S, 3)
        codes = model.encode_codes(pairs[:, 0], pairs[:, 1]).numpy()  # (B, L)
        for r, c in zip(batch, codes, strict=True):
            rows["source"].append(r.ref.source)
            rows["clip_index"].append(r.ref.index)
            rows["frame_index"].append(r.t)
            rows["gap"].append(r.gap)
            rows["instruction"].append(r.instruction)
            rows["codes"].append(c)
        batch.clear()

    counter: dict = {}
    for record in tqdm(iter_pairs(catalog, model.config.image_size, gap_s=gap_s, counter=counter),
                       desc="labelling pairs", unit="pair", disable=not progress):
        batch.append(record)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not rows["codes"]:
        raise UserError("no frame pairs to label (are the clips shorter than the gap?)")
    meta = {
        "format": LABELS_FORMAT,
        "laq_checkpoint": str(checkpoint_dir),
        "laq_sha256": file_sha256(checkpoint_dir / "model.safetensors"),
        "gap_s": gap_s,
        "image_size": model.config.image_size,
        "latent_seq_len": model.config.latent_seq_len,
        "codebook_size": model.config.codebook_size,
        "skipped_clips": counter.get("skipped", 0),
    }
    labels = LatentLabels(
        np.array(rows["source"]), np.array(rows["clip_index"], np.int64), np.array(rows["frame_index"], np.int64),
        np.array(rows["gap"], np.int64), np.array(rows["instruction"]), np.stack(rows["codes"]).astype(np.int64),
        meta,
    )
    write_labels(labels, out)
    return labels


def write_labels(labels: LatentLabels, out: Path) -> None:
    L = labels.codes.shape[1]
    table = pa.table({
        "source": pa.array(labels.sources.tolist(), pa.string()),
        "clip_index": pa.array(labels.clip_index, pa.int64()),
        "frame_index": pa.array(labels.frame_index, pa.int64()),
        "gap": pa.array(labels.gap, pa.int64()),
        "instruction": pa.array(labels.instructions.tolist(), pa.string()),
        "codes": pa.FixedSizeListArray.from_arrays(pa.array(labels.codes.reshape(-1), pa.int64()), L),
    }).replace_schema_metadata({"lapa": json.dumps(labels.meta)})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)


def read_labels(path: str | os.PathLike) -> LatentLabels:
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"label file {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise LabelFileError(f"{path} is not a readable parquet file: {err}") from err
    raw = (table.schema.metadata or {}).get(b"lapa")
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != LABELS_FORMAT:
        raise LabelFileError(f"{path} is not a latent label file (format {meta.get('format')!r})")
    needed = {"source", "clip_index", "frame_index", "gap", "instruction", "codes"}
    if missing := needed - set(table.column_names):
        raise LabelFileError(f"{path} lacks columns {sorted(missing)}")
    codes = np.asarray(table.column("codes").combine_chunks().flatten()).reshape(len(table), -1)
    if codes.shape[1] != meta["latent_seq_len"] or codes.min(initial=0) < 0 or \
            codes.max(initial=0) >= meta["codebook_size"]:
        raise LabelFileError(f"{path}: codes do not fit L={meta['latent_seq_len']}, K={meta['codebook_size']}")
    col = lambda name: np.asarray(table.column(name).to_numpy(zero_copy_only=False))  # noqa: E731
    return LatentLabels(col("source"), col("clip_index").astype(np.int64), col("frame_index").astype(np.int64),
                        col("gap").astype(np.int64), col("instruction"), codes.astype(np.int64), meta)
