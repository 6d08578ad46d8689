"""Episode data that streams from disk: the streamed set equals the in-memory one, memory stays bounded,
corrupt clips are skipped and counted, and DataLoader workers give the exact batches of the training process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from vla_fakes import FakeEncoder

from lapa.data.frame_pairs import ClipCatalog
from lapa.data.lazy_frames import LazyClipFrames
from lapa.data.video_folder import VideoFolderWriter
from lapa.policy.config import VLAConfig
from lapa.policy.datasets import ActionSet
from lapa.policy.streaming import streaming_action_set
from lapa.policy.train import TrainOptions, pretrain_actions

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def encoder():
    return FakeEncoder()


def test_the_streamed_set_is_the_in_memory_set(robot, encoder, tmp_path):
    memory = ActionSet.from_lerobot([robot], 32, 2, encoder)
    streamed = streaming_action_set([robot], 32, 2, encoder, index_cache=tmp_path / "index")
    assert isinstance(streamed.clips.frames, LazyClipFrames) and not isinstance(memory.clips.frames, LazyClipFrames)
    assert len(streamed) == len(memory) and streamed.clips.frames.shape == memory.clips.frames.shape
    np.testing.assert_array_equal(streamed.chunks, memory.chunks)
    np.testing.assert_array_equal(streamed.masks.numpy(), memory.masks.numpy())
    np.testing.assert_array_equal(streamed.clips.states, memory.clips.states)
    assert streamed.clips.instructions == memory.clips.instructions and streamed.clips.keys == memory.clips.keys

    idx = np.random.default_rng(0).integers(0, len(memory), 16)
    for s in (streamed, memory):
        s.set_tokenizer(_tokenizer(memory))
    a, b = streamed.batch(idx), memory.batch(idx)
    np.testing.assert_array_equal(a.images.numpy(), b.images.numpy())
    np.testing.assert_array_equal(a.bins.numpy(), b.bins.numpy())
    assert streamed.clips.frames.skipped == 0


def _tokenizer(data: ActionSet):
    from lapa.policy.action_tokenizer import ActionTokenizer

    return ActionTokenizer.fit_new(data.all_actions(), num_bins=16)


def test_only_a_few_decoded_clips_are_kept_and_a_corrupt_one_is_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "videos"
    w = VideoFolderWriter(root)
    for i in range(5):
        frames = np.full((6, 16, 16, 3), 40 * (i + 1), np.uint8)
        w.add(f"c{i}", frames, 10, f"clip {i}")
    w.finalize()
    (root / "c2.mp4").write_bytes(b"broken")
    catalog = ClipCatalog([root])
    offsets = np.arange(0, 6 * 6, 6)  # 5 clips of 6 frames
    frames = LazyClipFrames(catalog, range(5), offsets, image_size=8, cache_clips=2)
    got = frames[np.array([0, 6, 12, 18, 24, 29])]  # one row of every clip
    assert got.shape == (6, 8, 8, 3)
    assert got[2].max() == 0, "the corrupt clip gives black frames"
    assert abs(int(got[0].mean()) - 40) <= 3 and abs(int(got[3].mean()) - 160) <= 3
    assert frames.skipped == 1 and "skipping unreadable clip" in caplog.text
    assert len(frames._cache) == 2, "at most cache_clips decoded clips in memory"
    frames[np.array([13])]
    assert frames.skipped == 1, "a bad clip is counted once"
    with pytest.raises(IndexError):
        frames[np.array([30])]


def test_workers_and_streaming_train_on_exactly_the_batches_of_the_training_process(robot, encoder, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("LAPA_INDEX_CACHE", str(tmp_path / "index"))
    config = VLAConfig.preset("tiny", image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=2,
                              num_bins=16)
    runs = {}
    for name, kw in {"memory": {}, "stream_workers": {"stream": True, "workers": 2}}.items():
        opts = TrainOptions(steps=3, batch_size=4, ckpt_every=3, log_every=1, progress=False, augment="shift", **kw)
        pretrain_actions([robot], tmp_path / name, config=config, opts=opts, encoder=encoder)
        runs[name] = [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert runs["stream_workers"] == pytest.approx(runs["memory"], rel=1e-6)


def test_the_streamed_latent_set_is_the_in_memory_set_for_videos_and_episodes(robot, encoder, tmp_path,
                                                                              monkeypatch):
    from lapa.cli import main as lapa_main
    from lapa.policy.datasets import LatentSet
    from lapa.policy.streaming import streaming_latent_set

    monkeypatch.setenv("LAPA_INDEX_CACHE", str(tmp_path / "index"))
    videos = tmp_path / "videos"
    w = VideoFolderWriter(videos)
    for i in range(2):
        frames = np.random.default_rng(i).integers(0, 256, (14, 32, 32, 3), dtype=np.uint8)
        w.add(f"v{i}", frames, 10, f"push the block {i}")
    w.finalize()
    laq, labels = tmp_path / "laq", tmp_path / "labels.parquet"
    assert lapa_main(["laq", "train", "--data", str(videos), str(robot), "--out", str(laq), "--batch-size", "4",
                      "--workers", "0", "--steps", "1", "--threads", "1", "--device", "cpu"]) == 0
    assert lapa_main(["laq", "label", "--ckpt", str(laq), "--data", str(videos), str(robot), "--out",
                      str(labels)]) == 0
    memory = LatentSet(labels, 32, encoder)
    streamed = streaming_latent_set(labels, 32, encoder)
    assert isinstance(streamed.clips.frames, LazyClipFrames) and len(streamed) == len(memory)
    assert streamed.sources == memory.sources and len(streamed.sources) == 2
    a, b = streamed.sample(np.random.default_rng(1), 24), memory.sample(np.random.default_rng(1), 24)
    np.testing.assert_array_equal(a.images.numpy(), b.images.numpy())
    np.testing.assert_array_equal(a.codes.numpy(), b.codes.numpy())
    # the streamed set keeps at most a few decoded clips, whatever the corpus size
    assert len(streamed.clips.frames._cache) <= streamed.clips.frames.cache_clips


def test_a_rank_decodes_only_its_slices_of_the_streamed_global_batch(robot, encoder, tmp_path):
    memory = ActionSet.from_lerobot([robot], 32, 2, encoder)
    streamed = streaming_action_set([robot], 32, 2, encoder, index_cache=tmp_path / "index")
    for s in (streamed, memory):
        s.set_tokenizer(_tokenizer(memory))
    wanted = np.zeros(12, bool)
    wanted[3:6] = wanted[9:12] = True  # rank 1 of 2, per-device batch 3, 2 accumulation steps
    with streamed.clips.frames.only(wanted):
        a = streamed.sample(np.random.default_rng(4), 12, augment="shift")
    b = memory.sample(np.random.default_rng(4), 12, augment="shift")
    np.testing.assert_array_equal(a.images.numpy()[wanted], b.images.numpy()[wanted])
    assert a.images.numpy()[~wanted].max() == 0, "the other ranks' samples are not decoded"
    np.testing.assert_array_equal(a.bins.numpy(), b.bins.numpy())
