"""Pictures of what an LAQ model learned (the paper's latent-action analysis figures).

(a) `code_grid.png`: x_t decoded with each code in turn at each latent position, next to
    the real x_t and x_{t+H}; a row per position shows what that token controls.
(b) `rollout.mp4`: the decoder as a world model, rolled out from x_t with the codes inferred
    from the real episode, side by side with the real frames.
(c) `code_usage.png`: how often each code is used at each position over the dataset.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lapa.data.frame_pairs import ClipCatalog, gap_frames, resize_frames  # noqa: E402
from lapa.laq.model import LAQ  # noqa: E402


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@torch.inference_mode()
def code_grid(model: LAQ, x_t: np.ndarray, x_tH: np.ndarray, out: Path) -> Path:
    """x_t, x_tH: (S, S, 3) uint8. Writes a (L+1) x (K+2) grid of decoded frames."""
    c = model.config
    xt = torch.from_numpy(x_t)[None]
    own = model.encode_codes(xt, torch.from_numpy(x_tH)[None])[0]  # (L,)
    rows = []
    for pos in range(c.latent_seq_len + 1):
        codes = own.repeat(c.codebook_size, 1)  # (K, L)
        if pos < c.latent_seq_len:
            codes[:, pos] = torch.arange(c.codebook_size)
        else:
            codes[:] = torch.arange(c.codebook_size)[:, None]  # every position the same code
        rows.append(_to_uint8(model.decode(xt.expand(c.codebook_size, -1, -1, -1), codes)))  # (K, S, S, 3)
    fig, axes = plt.subplots(len(rows), c.codebook_size + 2,
                             figsize=(1.3 * (c.codebook_size + 2), 1.3 * len(rows)), squeeze=False)
    for r, decoded in enumerate(rows):
        label = f"position {r}" if r < c.latent_seq_len else "all positions"
        axes[r][0].imshow(x_t)
        axes[r][0].set_ylabel(label, fontsize=7)
        axes[r][1].imshow(x_tH)
        for k in range(c.codebook_size):
            axes[r][k + 2].imshow(decoded[k])
            if r == 0:
                axes[r][k + 2].set_title(f"code {k}", fontsize=7)
    axes[0][0].set_title("x_t", fontsize=7)
    axes[0][1].set_title("x_t+H", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"x_t decoded with each latent action (this pair's codes: {own.tolist()})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@torch.inference_mode()
def rollout_video(model: LAQ, frames: np.ndarray, gap: int, out: Path, fps: int = 4) -> Path:
    """World-model rollout from frames[0] with codes inferred from the real clip (T, S, S, 3)."""
    from lapa.data.video_io import write_video

    real = torch.from_numpy(frames[::gap])  # (N, S, S, 3): the real frames H apart
    if len(real) < 2:
        raise ValueError(f"a rollout needs a clip longer than the gap ({gap} frames), got {len(frames)}")
    codes = [model.encode_codes(real[i][None], real[i + 1][None]) for i in range(len(real) - 1)]
    predicted = _to_uint8(model.decode_sequence(real[:1], codes)[0])  # (N-1, S, S, 3)
    side = np.concatenate([real[1:].numpy(), predicted], axis=2)  # (N-1, S, 2S, 3): real | predicted
    side = np.concatenate([np.concatenate([real[:1].numpy()] * 2, axis=2), side])
    scale = max(1, 256 // frames.shape[1])
    side = side.repeat(scale, axis=1).repeat(scale, axis=2)
    return write_video(out, side, fps=fps)


def usage_histograms(codes: np.ndarray, codebook_size: int, out: Path) -> Path:
    """codes: (N, L) int64 over a dataset. One bar chart per latent position."""
    L = codes.shape[1]
    fig, axes = plt.subplots(1, L, figsize=(2.6 * L, 2.4), squeeze=False, sharey=True)
    for i in range(L):
        counts = np.bincount(codes[:, i], minlength=codebook_size) / len(codes)
        axes[0][i].bar(np.arange(codebook_size), counts, color="tab:blue")
        axes[0][i].set_title(f"position {i}", fontsize=8)
        axes[0][i].set_xticks(range(codebook_size))
        axes[0][i].axhline(1 / codebook_size, color="grey", lw=0.8, ls="--")
    axes[0][0].set_ylabel("fraction of pairs")
    fig.suptitle("latent action code usage (dashed: uniform)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def inspect_laq(model: LAQ, catalog: ClipCatalog, out_dir: Path, gap_s: float = 0.6, seed: int = 0,
                max_pairs: int = 2000) -> dict[str, str]:
    from lapa.laq.evaluate import code_dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clip = catalog.read(catalog.refs[int(rng.integers(len(catalog)))])
    frames = resize_frames(clip.frames, model.config.image_size)
    gap = gap_frames(gap_s, clip.fps)
    t = int(rng.integers(max(1, len(frames) - gap)))
    paths = {
        "code_grid": code_grid(model, frames[t], frames[min(t + gap, len(frames) - 1)], out_dir / "code_grid.png"),
        "rollout": rollout_video(model, frames, gap, out_dir / "rollout.mp4"),
    }
    coded = code_dataset(model, catalog, gap_s, max_pairs=max_pairs, progress=False)
    paths["code_usage"] = usage_histograms(coded.codes, model.config.codebook_size, out_dir / "code_usage.png")
    return {k: str(v) for k, v in paths.items()}
