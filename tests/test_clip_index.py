"""Data at scale: the clip index cached on disk as JSON, disjoint per-rank shards of the frame-pair
stream, corrupt clips skipped and counted, and the rank-agreement check of lapa.distributed."""

from __future__ import annotations

import itertools
import json
import os
import time

import numpy as np
import pytest

from lapa.data import clip_index
from lapa.data.frame_pairs import ClipCatalog, FramePairStream
from lapa.data.video_folder import VideoFolderWriter
from lapa.distributed import DistEnv, check_same_everywhere, digest, rank_slice, shard


def _frames(t: int, size: int = 16) -> np.ndarray:
    f = np.zeros((t, size, size, 3), np.uint8)
    for i in range(t):
        f[i, 4:10, i % size:i % size + 4] = 255
    return f


@pytest.fixture()
def videos(tmp_path):
    root = tmp_path / "videos"
    w = VideoFolderWriter(root)
    for i in range(6):
        w.add(f"clip{i}", _frames(12), 10, f"move block {i}")
    w.finalize()
    return root


def test_the_index_is_built_once_cached_as_json_and_rebuilt_when_the_listing_changes(videos, tmp_path):
    cache = tmp_path / "cache"
    first = ClipCatalog([videos], index_cache=cache)
    assert first.from_cache == [False] and len(first) == 6
    files = list(cache.glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["format"] == clip_index.INDEX_FORMAT and doc["kind"] == "videos" and len(doc["clips"]) == 6

    second = ClipCatalog([videos], index_cache=cache)
    assert second.from_cache == [True]
    assert [r.instruction for r in second.refs] == [r.instruction for r in first.refs]
    assert second.index_digest == first.index_digest
    frames, fps = second.read(second.refs[3]).frames, second.read(second.refs[3]).fps
    assert frames.shape == (12, 16, 16, 3) and fps == pytest.approx(10)

    # a caption edit changes the signature: the index is listed again, and its digest changes
    captions = videos / "captions.jsonl"
    lines = captions.read_text().splitlines()
    captions.write_text("\n".join(lines[:4]) + "\n")
    os.utime(captions, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    third = ClipCatalog([videos], index_cache=cache)
    assert third.from_cache == [False] and len(third) == 4 and third.index_digest != first.index_digest
    assert ClipCatalog([videos], index_cache=cache).from_cache == [True]


def test_a_corrupt_cache_file_is_rebuilt_not_trusted(videos, tmp_path):
    cache = tmp_path / "cache"
    ClipCatalog([videos], index_cache=cache)
    (path,) = cache.glob("*.json")
    path.write_text("{not json")
    again = ClipCatalog([videos], index_cache=cache)
    assert again.from_cache == [False] and len(again) == 6


def test_ranks_and_workers_read_disjoint_clips_that_cover_the_data(videos):
    catalog = ClipCatalog([videos])
    stream = FramePairStream(catalog, image_size=8, gap_s=0.2, seed=3)
    shards = 4  # 2 ranks x 2 workers
    for epoch in range(2):
        orders = [stream.shard_order(epoch, s, shards) for s in range(shards)]
        flat = np.concatenate(orders)
        assert sorted(flat.tolist()) == list(range(len(catalog))), "every clip once per epoch"
    # the same seed deals the same shards in every process
    again = FramePairStream(catalog, image_size=8, gap_s=0.2, seed=3)
    assert np.array_equal(again.shard_order(5, 1, shards), stream.shard_order(5, 1, shards))


def test_a_rank_streams_its_shard_and_skips_and_counts_a_corrupt_clip(videos, caplog):
    (videos / "clip0.mp4").write_bytes(b"not a video")
    catalog = ClipCatalog([videos])
    streams = [FramePairStream(catalog, image_size=8, gap_s=0.2, pairs_per_clip=2, seed=0, rank=r, world_size=2)
               for r in range(2)]
    pairs = [list(itertools.islice(iter(s), 8)) for s in streams]
    assert all(p.shape == (2, 8, 8, 3) for ps in pairs for p in ps)
    assert sum(s.skipped for s in streams) >= 1
    assert "skipping unreadable clip" in caplog.text


def test_one_process_without_torchrun_is_a_world_of_one_on_the_cpu(monkeypatch):
    import torch

    from lapa.distributed import autocast_dtype, init, resolve_device
    from lapa.errors import UserError

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = init("cpu")
    assert (env.rank, env.world_size, env.distributed, env.is_main) == (0, 1, False, True)
    assert env.device == torch.device("cpu") and env.precision == "fp32" and autocast_dtype(env.device) is None
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(UserError, match="bad torchrun environment"):
        init("cpu")


def test_agreement_helpers_in_one_process():
    env = DistEnv()
    check_same_everywhere(env, {"config": {"a": 1}})  # a world of one always agrees
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    assert list(shard(5, 1, 2)) == [1, 3]
    assert rank_slice(8, 1, 2) == slice(4, 8)
    with pytest.raises(ValueError):
        rank_slice(7, 0, 2)
