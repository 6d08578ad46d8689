"""Action-free video folders: captions.jsonl, Something-Something v2 labels, resumable writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lapa.data.video_folder import VideoClip, VideoFolder, VideoFolderError, VideoFolderWriter
from lapa.data.video_io import write_video


def clip(t: int = 6, level: int = 40) -> np.ndarray:
    """(t, 32, 32, 3) uint8 with a red level that identifies the clip."""
    yy, xx = np.mgrid[:32, :32]
    frames = np.empty((t, 32, 32, 3), np.uint8)
    frames[..., 0] = level
    frames[..., 1] = (2 * xx)[None]
    frames[..., 2] = (2 * yy)[None]
    return frames


def test_writer_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    writer = VideoFolderWriter(root)
    writer.add("first", clip(6, 40), fps=10, instruction="push the cup left")
    writer.add("second", clip(8, 200), fps=15, instruction="open the drawer")
    assert not (root / "captions.jsonl").exists()  # published only by finalize()
    writer.finalize()
    assert sorted(p.name for p in root.iterdir()) == ["captions.jsonl", "first.mp4", "second.mp4"]

    folder = VideoFolder(root)
    assert len(folder) == 2
    assert folder[0] == VideoClip(root / "first.mp4", "push the cup left")
    assert folder[1].instruction == "open the drawer"
    frames, fps = folder.read(1)
    assert frames.shape == (8, 32, 32, 3) and fps == pytest.approx(15)
    assert abs(frames[..., 0].mean() - 200) < 3


def test_writer_resumes_after_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    writer = VideoFolderWriter(root)
    writer.add("a", clip(4, 40), fps=10, instruction="first")
    writer.add("b", clip(4, 80), fps=10, instruction="second")
    del writer  # "crash": never finalized; simulate a torn line and a clip whose file vanished
    (root / "b.mp4").unlink()
    with open(root / "captions.partial.jsonl", "a", encoding="utf-8") as f:
        f.write('{"video": "c.mp4", "instr')
    with pytest.raises(VideoFolderError, match="unfinished"):
        VideoFolder(root)
    with pytest.raises(FileExistsError, match="resume=True"):
        VideoFolderWriter(root)

    writer = VideoFolderWriter(root, resume=True)
    assert writer.existing_names() == {"a"}
    with pytest.raises(ValueError, match="already written"):
        writer.add("a", clip(4), fps=10, instruction="again")
    writer.add("b", clip(4, 120), fps=10, instruction="second")
    writer.finalize()
    folder = VideoFolder(root)
    assert [(c.path.name, c.instruction) for c in folder] == [("a.mp4", "first"), ("b.mp4", "second")]

    # resuming a finished folder keeps its clips; overwrite starts over
    more = VideoFolderWriter(root, resume=True)
    assert more.existing_names() == {"a", "b"}
    more.add("c", clip(4), fps=10, instruction="third")
    more.finalize()
    assert len(VideoFolder(root)) == 3
    fresh = VideoFolderWriter(root, overwrite=True)
    assert fresh.existing_names() == set()
    fresh.finalize()
    assert len(VideoFolder(root)) == 0 and not (root / "a.mp4").exists()


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    writer = VideoFolderWriter(tmp_path)
    for name in ("", "../up", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="name"):
            writer.add(name, clip(), fps=10, instruction="x")
    with pytest.raises(ValueError, match="uint8"):
        writer.add("ok", clip().astype(np.float32), fps=10, instruction="x")
    with pytest.raises(ValueError):
        VideoFolderWriter(tmp_path / "x", overwrite=True, resume=True)
    assert writer.existing_names() == set()


def test_folder_without_captions_lists_videos(tmp_path: Path) -> None:
    write_video(tmp_path / "b.webm", clip(3), fps=10)
    write_video(tmp_path / "a.mp4", clip(3), fps=10)
    (tmp_path / "notes.txt").write_text("not a video")
    folder = VideoFolder(tmp_path)
    assert [(c.path.name, c.instruction) for c in folder] == [("a.mp4", ""), ("b.webm", "")]
    assert folder.read(1)[0].shape == (3, 32, 32, 3)


def test_something_something_v2_labels(tmp_path: Path) -> None:
    for clip_id, level in (("101", 30), ("102", 90), ("205", 150)):
        write_video(tmp_path / f"{clip_id}.webm", clip(4, level), fps=12)
    entry = {"template": "Putting [something] into [something]", "placeholders": ["a pen", "a cup"]}
    train = [
        {"id": "101", "label": "Putting a pen into a cup", **entry},
        {"id": "102", "label": "Pushing a box from left to right", **entry},
        {"id": "999", "label": "not downloaded", **entry},
    ]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "validation.json").write_text(json.dumps([{"id": "205", "label": "Opening a drawer"}]))

    folder = VideoFolder(tmp_path)  # split="train"
    assert [(c.path.name, c.instruction) for c in folder] == [
        ("101.webm", "Putting a pen into a cup"),
        ("102.webm", "Pushing a box from left to right"),
    ]
    assert folder.missing == 1
    frames, fps = folder.read(1)
    assert frames.shape == (4, 32, 32, 3) and fps == pytest.approx(12)
    assert abs(frames[..., 0].mean() - 90) < 3

    validation = VideoFolder(tmp_path, split="validation")
    assert [(c.path.name, c.instruction) for c in validation] == [("205.webm", "Opening a drawer")]


def test_ssv2_labels_under_labels_dir_and_errors(tmp_path: Path) -> None:
    write_video(tmp_path / "7.webm", clip(2), fps=10)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "train.json").write_text(json.dumps([{"id": 7, "label": "Waving"}]))
    assert VideoFolder(tmp_path)[0] == VideoClip(tmp_path / "7.webm", "Waving")
    (tmp_path / "labels" / "train.json").write_text(json.dumps([{"label": "no id"}]))
    with pytest.raises(VideoFolderError, match="entry 0 has no 'id'"):
        VideoFolder(tmp_path)
    (tmp_path / "labels" / "train.json").write_text("[{")
    with pytest.raises(VideoFolderError, match="not valid JSON"):
        VideoFolder(tmp_path)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a.mp4", "x"]', "line 2: expected a JSON object"),
        ('{"instruction": "no video"}', "line 2: 'video' must be"),
        ('{"video": "a.mp4", "instruction": 3}', "line 2: 'instruction' must be a string"),
        ('{"video": "../a.mp4", "instruction": "x"}', "line 2: 'video' must be a path inside"),
        ('{"video": "missing.mp4", "instruction": "x"}', "line 2: video file .*missing.mp4 does not exist"),
    ],
)
def test_malformed_captions_name_the_line(tmp_path: Path, bad_line: str, message: str) -> None:
    write_video(tmp_path / "a.mp4", clip(2), fps=10)
    good = json.dumps({"video": "a.mp4", "instruction": "fine"})
    (tmp_path / "captions.jsonl").write_text(f"{good}\n{bad_line}\n\n{good}\n")
    with pytest.raises(VideoFolderError, match=message):
        VideoFolder(tmp_path)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(VideoFolderError, match="does not exist"):
        VideoFolder(tmp_path / "nope")
