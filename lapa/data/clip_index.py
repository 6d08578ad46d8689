"""The clip index of a dataset root, built once and cached on disk as JSON.

Listing a Something-Something-v2 tree (200k+ videos: a label file to parse and a stat per video)
or a large LeRobot dataset costs seconds to minutes; every training process and every DataLoader
worker needs the list. The index holds, per root, the clips in catalog order (a video folder's
relative paths and instructions, a LeRobot dataset's episode count) and a signature of the files
the listing came from (sizes and mtimes of the captions / label / meta files and of the folder).
A cached index whose signature still matches is read instead of listing again; anything else
rebuilds it. Frames are never read here: clips are decoded one at a time by the data streams.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INDEX_FORMAT = "lapa-clip-index/1"
CACHE_ENV = "LAPA_INDEX_CACHE"


def default_cache_dir() -> Path:
    """$LAPA_INDEX_CACHE, else ~/.cache/lapa/index."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "lapa" / "index"


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def signature(root: Path) -> dict[str, Any]:
    """What a root's listing depends on: the folder itself and its listing files (size, mtime)."""
    files = ["meta/info.json", "meta/tasks.parquet", "captions.jsonl", "captions.partial.jsonl",
             "train.json", "labels/train.json"]
    episodes = sorted((root / "meta" / "episodes").glob("*/*.parquet")) if (root / "meta").is_dir() else []
    return {"root": _stat(root), **{f: _stat(root / f) for f in files if (root / f).exists()},
            **{str(p.relative_to(root)): _stat(p) for p in episodes}}


def cache_path(cache_dir: Path, root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return cache_dir / f"{root.name}-{key}.json"


def load_cached(cache_dir: Path, root: Path) -> dict[str, Any] | None:
    """The cached index of `root` if one exists and its signature still matches, else None."""
    path = cache_path(cache_dir, root)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT or doc.get("signature") != signature(root):
        return None
    return doc


def store(cache_dir: Path, root: Path, entry: dict[str, Any]) -> Path | None:
    """Write `entry` (kind, clips...) as root's cached index; None (and a warning) if the cache is not writable."""
    path = cache_path(cache_dir, root)
    doc = {"format": INDEX_FORMAT, "root": str(root.resolve()), "signature": signature(root), **entry}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot cache the clip index of %s in %s: %s", root, cache_dir, err)
        return None
    return path


def entry_digest(entries: list[dict[str, Any]]) -> str:
    """sha256 of what the indexes list (kinds, clips, instructions), not where or when they were built:
    the ranks compare it to know they train on the same data."""
    body = [{k: v for k, v in e.items() if k not in ("format", "root", "signature")} for e in entries]
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
