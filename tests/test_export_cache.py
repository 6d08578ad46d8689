"""export/cache.py: a checkpoint is exported once, cached by content, and rebuilt when damaged."""

from __future__ import annotations

import json

import pytest

from bench.random_models import random_checkpoint, random_text_encoder
from export.cache import ensure_export, export_key
from export.metadata import ExportError
from export.ort_policy import OrtPolicy

SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, num_bins=16, chunk_size=2, text_dim=32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    ckpt = random_checkpoint(root / "ckpt", preset="tabletop", **SMALL)
    text = random_text_encoder(root / "text_encoder", hidden=32)
    return root, ckpt, text


def test_a_checkpoint_is_exported_once_and_then_found(models):
    root, ckpt, text = models
    logs: list[str] = []
    out = ensure_export(ckpt, text, root=root / "cache", log=logs.append)
    assert out.parent == root / "cache" / "exports" and (out / "policy.onnx").is_file()
    assert any("exporting" in line for line in logs)
    logs.clear()
    assert ensure_export(ckpt, text, root=root / "cache", log=logs.append) == out and not logs  # no second export
    assert ensure_export(out, log=logs.append) == out  # an export directory is served as it is
    policy = OrtPolicy.from_dir(out, threads=1)
    assert policy.metadata["backend"] == "onnxruntime" and policy.metadata["chunk_size"] == 2


def test_another_checkpoint_gets_another_key(models, tmp_path):
    _root, ckpt, text = models
    other = random_checkpoint(tmp_path / "other", preset="tabletop", seed=1, **SMALL)
    assert export_key(ckpt, text) != export_key(other, text)
    assert export_key(ckpt, text) != export_key(ckpt, None)  # another text encoder, another export


def test_a_change_to_the_graph_code_gets_another_key(models, tmp_path, monkeypatch):
    """The key covers the code that builds the graphs, so a changed model or exporter never serves a
    stale cached export."""
    import shutil

    import export.cache as cache

    _root, ckpt, text = models
    before = export_key(ckpt, text)
    copy = tmp_path / "repo"
    for source in cache.GRAPH_SOURCES:
        (copy / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cache._REPO_ROOT / source, copy / source)
    monkeypatch.setattr(cache, "_REPO_ROOT", copy)
    assert export_key(ckpt, text) == before  # same code, same key
    with open(copy / "lapa/policy/model.py", "a") as f:
        f.write("\n# a change\n")
    assert export_key(ckpt, text) != before


def test_a_damaged_cached_export_is_rebuilt_not_served(models):
    root, ckpt, text = models
    out = ensure_export(ckpt, text, root=root / "cache", log=lambda _m: None)
    (out / "policy.onnx").write_bytes(b"truncated")
    logs: list[str] = []
    assert ensure_export(ckpt, text, root=root / "cache", log=logs.append) == out
    assert any("unusable" in line for line in logs)
    meta = json.loads((out / "metadata.json").read_text())
    assert OrtPolicy(out, threads=1).metadata["model_hash"] == meta["checkpoint"]["sha256"]


def test_a_directory_that_is_neither_is_refused(tmp_path):
    with pytest.raises(ExportError, match="neither an export directory"):
        ensure_export(tmp_path, root=tmp_path / "cache")
