#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU and only this repository:
#   scripts/gpu_check.sh [--steps 300] [--nproc N] [--out runs/gpu_check] ...
# sets up .venv (./run setup) plus TensorRT (requirements-gpu.txt), trains every LAQ and VLA preset
# for a few hundred steps under torchrun with bf16, exports the tiny VLA to ONNX, builds its
# TensorRT engine, checks parity and measures TensorRT latency; the JSON report lands in
# runs/gpu_check/report.json (scripts/gpu_check.py documents the stages). Exits non-zero, saying
# why, when there is no GPU or any stage fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"   # the data stage renders offscreen
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "[gpu-check] FAILED: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU). This check needs a GPU." >&2
  exit 3
fi
nvidia-smi -L

./run setup
# TensorRT's wheels come from NVIDIA through PyPI; only GPU machines install them, matching torch's CUDA major
cuda_major=$(.venv/bin/python -c "import torch; print((torch.version.cuda or '').split('.')[0])")
if [ -z "$cuda_major" ]; then
  echo "[gpu-check] FAILED: the torch in .venv is a CPU-only build; install a CUDA build of torch==2.13.0" >&2
  exit 3
fi
trt_version=$(sed -n 's/^TENSORRT_VERSION=//p' requirements-gpu.txt)
.venv/bin/python -c "import tensorrt" 2>/dev/null || \
  .venv/bin/python -m pip install -q "tensorrt-cu${cuda_major}==${trt_version}"
.venv/bin/python scripts/gpu_check.py --preflight-only
exec .venv/bin/python scripts/gpu_check.py "$@"
