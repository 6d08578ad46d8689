"""Action-free video sets: a folder of clips with one instruction each (Something-Something style).

Accepted layouts, checked in this order:

1. `captions.jsonl`: one object per line, `{"video": "<file relative to root>", "instruction": "..."}`.
2. Something-Something v2: label files `<split>.json` (in root or root/labels) holding a JSON
   list of `{"id": ..., "label": ...}`; the clip is `<id>.webm` in root. Entries whose video is
   not present are skipped (partial downloads are common) and counted in `missing`.
3. Otherwise every `*.mp4` / `*.webm` directly in root, with empty instructions.

VideoFolderWriter writes layout 1 resumably: each clip is written atomically, then a line is
appended (and fsynced) to `captions.partial.jsonl`; finalize() renames that to `captions.jsonl`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lapa.data.video_io import check_frames, fsync_dir, fsync_file, read_video, write_video
from lapa.errors import UserError

CAPTIONS = "captions.jsonl"
PARTIAL = "captions.partial.jsonl"
VIDEO_SUFFIXES = (".mp4", ".webm")

log = logging.getLogger(__name__)


class VideoFolderError(UserError):
    """A video folder that is missing or whose captions/labels cannot be parsed."""


@dataclass
class VideoClip:
    path: Path
    instruction: str


class VideoFolder:
    """Clips of a video folder, in file order (captions / label-file order, else sorted names)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise VideoFolderError(f"video folder {self.root} does not exist or is not a directory")
        self.split = split
        self.missing = 0  # SSv2 label entries without a video file
        captions = self.root / CAPTIONS
        labels = _find_label_file(self.root, split)
        if captions.is_file():
            self.clips = _read_captions(captions, self.root)
        elif (self.root / PARTIAL).is_file():
            raise VideoFolderError(
                f"{self.root} is unfinished (only {PARTIAL}): resume its VideoFolderWriter and finalize()"
            )
        elif labels is not None:
            self.clips, self.missing = _read_ssv2_labels(labels, self.root)
            if self.missing:
                log.warning("%s: %d clips listed in %s have no video file", self.root, self.missing, labels)
        else:
            self.clips = [
                VideoClip(path, "")
                for path in sorted(self.root.iterdir())
                if path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".") and path.is_file()
            ]

    @classmethod
    def from_clips(cls, root: str | os.PathLike[str], clips: Sequence[Sequence[str]], missing: int = 0,
                   split: str = "train") -> VideoFolder:
        """A folder from a listing made earlier (lapa/data/clip_index.py): (path relative to root, instruction).
        Clips become VideoClips only when asked for: 200k Path objects cost seconds at every start."""
        folder = cls.__new__(cls)
        folder.root, folder.split, folder.missing = Path(root), split, missing
        folder.clips = _ListedClips(folder.root, clips)  # type: ignore[assignment]
        return folder

    def listing(self) -> Sequence[Sequence[str]]:
        """(path relative to root, instruction) of every clip, in order: what a clip index stores."""
        if isinstance(self.clips, _ListedClips):
            return self.clips.listing
        prefix = str(self.root) + os.sep
        return [(str(c.path)[len(prefix):] if str(c.path).startswith(prefix) else str(c.path.relative_to(self.root)),
                 c.instruction) for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> VideoClip:
        return self.clips[i]

    def read(self, i: int) -> tuple[np.ndarray, float]:
        """Frames (T, H, W, 3) uint8 RGB and fps of clip i."""
        return read_video(self.clips[i].path)


class _ListedClips(Sequence):
    """A listing's clips, each made a VideoClip when indexed."""

    def __init__(self, root: Path, listing: Sequence[Sequence[str]]) -> None:
        self.root, self.listing = root, listing

    def __len__(self) -> int:
        return len(self.listing)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        rel, instruction = self.listing[i]
        return VideoClip(self.root / rel, instruction)


def _read_captions(path: Path, root: Path) -> list[VideoClip]:
    clips: list[VideoClip] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            clips.append(_parse_caption_line(line, path, line_no, root))
    return clips


def _parse_caption_line(line: str, path: Path, line_no: int, root: Path) -> VideoClip:
    where = f"{path}, line {line_no}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise VideoFolderError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(entry, dict):
        raise VideoFolderError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    video, instruction = entry.get("video"), entry.get("instruction", "")
    if not isinstance(video, str) or not video:
        raise VideoFolderError(f"{where}: 'video' must be a non-empty file name relative to {root}")
    if not isinstance(instruction, str):
        raise VideoFolderError(f"{where}: 'instruction' must be a string")
    rel = Path(video)
    if rel.is_absolute() or ".." in rel.parts:
        raise VideoFolderError(f"{where}: 'video' must be a path inside {root}, got {video!r}")
    clip_path = root / rel
    if not clip_path.is_file():
        raise VideoFolderError(f"{where}: video file {clip_path} does not exist")
    return VideoClip(clip_path, instruction)


def _find_label_file(root: Path, split: str) -> Path | None:
    for candidate in (root / f"{split}.json", root / "labels" / f"{split}.json"):
        if candidate.is_file():
            return candidate
    return None


def _read_ssv2_labels(path: Path, root: Path) -> tuple[list[VideoClip], int]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VideoFolderError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise VideoFolderError(f"{path}: expected a JSON list of {{'id', 'label'}} entries")
    clips: list[VideoClip] = []
    missing = 0
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise VideoFolderError(f"{path}: entry {n} has no 'id'")
        label = entry.get("label", "")  # the test split has no labels
        if not isinstance(label, str):
            raise VideoFolderError(f"{path}: entry {n} has a non-string 'label'")
        clip_id = str(entry["id"])
        if not clip_id or "/" in clip_id or clip_id.startswith("."):
            raise VideoFolderError(f"{path}: entry {n} has an invalid id {clip_id!r}")
        clip_path = root / f"{clip_id}.webm"
        if clip_path.is_file():
            clips.append(VideoClip(clip_path, label))
        else:
            missing += 1
    if entries and not clips:
        raise VideoFolderError(f"{path} lists {len(entries)} clips but no .webm files of them are in {root}")
    return clips, missing


class VideoFolderWriter:
    """Write clips + captions.jsonl so that an interrupted run can resume where it stopped.

    Without `resume` or `overwrite`, refuses a folder that already holds captions. With
    `overwrite`, forgets (and deletes the videos of) an existing captions file. With `resume`,
    keeps clips already listed (in captions.partial.jsonl, else captions.jsonl) whose files exist;
    existing_names() tells the caller which to skip.
    """

    def __init__(self, root: str | os.PathLike[str], overwrite: bool = False, resume: bool = False) -> None:
        if overwrite and resume:
            raise ValueError("pass either overwrite=True or resume=True, not both")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._partial = self.root / PARTIAL
        self._final = self.root / CAPTIONS
        self._entries: dict[str, dict[str, str]] = {}  # name -> caption entry, in order
        self._finalized = False
        existing = [p for p in (self._partial, self._final) if p.is_file()]
        if existing and not (overwrite or resume):
            raise FileExistsError(
                f"{self.root} already holds {existing[0].name}; pass resume=True to continue it "
                "or overwrite=True to start over"
            )
        if overwrite:
            for path in existing:
                for entry in _read_entries_lenient(path):
                    (self.root / entry["video"]).unlink(missing_ok=True)
                path.unlink()
        elif resume and existing:
            for entry in _read_entries_lenient(existing[0]):  # partial first: it is the newest
                if (self.root / entry["video"]).is_file():
                    self._entries[Path(entry["video"]).stem] = entry
        # Rewrite the partial file cleanly (drops a line torn by a crash, or dropped clips).
        _write_lines_atomic(self._partial, self._entries.values())

    def existing_names(self) -> set[str]:
        """Names (without .mp4) of clips already written and recorded."""
        return set(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, name: str, frames: np.ndarray, fps: int, instruction: str) -> Path:
        """Write `<name>.mp4` and record it. Returns the video path."""
        if self._finalized:
            raise RuntimeError(f"video folder writer for {self.root} is finalized")
        if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
            raise ValueError(f"clip name must be a plain file name without '/', got {name!r}")
        if name in self._entries:
            raise ValueError(f"clip {name!r} was already written to {self.root}")
        if not isinstance(instruction, str):
            raise ValueError(f"instruction must be a string, got {type(instruction).__name__}")
        check_frames(frames, f"frames of clip {name!r}")
        path = write_video(self.root / f"{name}.mp4", frames, fps)  # atomic: temp file + rename
        entry = {"video": path.name, "instruction": instruction}
        with open(self._partial, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._entries[name] = entry
        return path

    def finalize(self) -> Path:
        """Publish captions.jsonl (atomic rename). Returns its path."""
        if self._finalized:
            raise RuntimeError(f"video folder writer for {self.root} is already finalized")
        fsync_file(self._partial)
        os.replace(self._partial, self._final)
        fsync_dir(self.root)
        self._finalized = True
        return self._final


def _read_entries_lenient(path: Path) -> list[dict[str, str]]:
    """Caption entries of a file this writer produced; skips a torn last line and bad lines."""
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("video"), str)
                and entry["video"]
                and "/" not in entry["video"]
                and not entry["video"].startswith(".")
                and isinstance(entry.get("instruction", ""), str)
            ):
                entries.append({"video": entry["video"], "instruction": entry.get("instruction", "")})
    return entries


def _write_lines_atomic(path: Path, entries: Iterable[dict[str, str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
