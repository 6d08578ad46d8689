"""Process groups, devices, precision and rank helpers for training under `torchrun`.

One process without torchrun is a world of one: nothing here starts a process group then, and
every helper degrades to the single-process behaviour. Under torchrun the environment variables
it sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) describe the world; the backend
is nccl when the training device is a GPU and gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lapa.config_checks import PRECISIONS
from lapa.errors import UserError

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")
PROCESS_GROUP_TIMEOUT_S = 1800  # a rank stuck on data for half an hour is dead, not slow


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the training world."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (a world of one)
    requested_precision: str = "auto"  # one of PRECISIONS (--precision)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and metrics and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def precision(self) -> str:
        return "bf16" if autocast_dtype(self.device, self.requested_precision) is not None else "fp32"


def torchrun_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise UserError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from err
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """cpu | cuda | auto -> this process's device (cuda:LOCAL_RANK for GPUs)."""
    if name not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to this process (torch.cuda.is_available() "
                        f"is False, torch {torch.__version__})")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"LOCAL_RANK {local_rank} but only {count} CUDA device(s): start at most {count} "
                        "processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def init(device: str = "auto", precision: str = "auto") -> DistEnv:
    """This process's place in the world; starts the process group under torchrun (world > 1)."""
    rank, world, local = torchrun_world()
    dev = resolve_device(device, local)
    check_precision(dev, precision)
    if world == 1:
        return DistEnv(0, 1, 0, dev, None, precision)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # binds NCCL to this GPU up front
        dist.init_process_group(**kwargs)
    log.info("rank %d of %d (local %d) on %s, backend %s", rank, world, local, dev, backend)
    return DistEnv(rank, world, local, dev, backend, precision)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- precision


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively here (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse a precision the device cannot run; warn where bf16 would be emulated (slower than fp32)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "bf16":
        return
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp32")
    if device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so oneDNN emulates it "
                    "and training is slower than fp32")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The forward pass's autocast dtype, None for fp32.

    auto: bf16 on GPUs that support it, fp32 on CPUs. bf16 on a CPU with native bf16 (AVX512-BF16) runs
    training about 2.1x faster than fp32 on this project's 2-core machine; parameters, optimizer
    state and attention scores stay fp32 either way.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(env: DistEnv) -> contextlib.AbstractContextManager:
    """The forward pass's precision context: bf16 autocast where env's precision says so, else a no-op."""
    dtype = autocast_dtype(env.device, env.requested_precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=env.device.type, dtype=dtype)


# ----------------------------------------------------------------------------- collectives


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_mean(env: DistEnv, values: list[float]) -> list[float]:
    """Mean over ranks of a few scalars (one collective)."""
    if not env.distributed or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(env))  # (N,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / env.world_size).tolist()


def all_reduce_sum_(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (counts such as codebook usage)."""
    if env.distributed:
        moved = tensor.to(_comm_device(env))
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved)
    return tensor


def broadcast_(env: DistEnv, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place copy of rank `src`'s tensor onto every rank."""
    if env.distributed:
        moved = tensor.to(_comm_device(env))
        dist.broadcast(moved, src=src)
        tensor.copy_(moved)
    return tensor


def broadcast_json(env: DistEnv, value: Any, src: int = 0) -> Any:
    """Rank `src`'s JSON-able value on every rank (sent as UTF-8 bytes: nothing is pickled)."""
    if not env.distributed:
        return value
    data = json.dumps(value).encode() if env.rank == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=_comm_device(env))
    dist.broadcast(size, src=src)
    buf = torch.zeros(int(size[0]), dtype=torch.uint8, device=_comm_device(env))  # (N,) bytes
    if env.rank == src:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=src)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def _all_gather_bytes(env: DistEnv, data: bytes) -> list[bytes]:
    """Every rank's `data` of one fixed length (digests)."""
    mine = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(_comm_device(env))  # (N,)
    out = [torch.zeros_like(mine) for _ in range(env.world_size)]
    dist.all_gather(out, mine)
    return [bytes(t.cpu().tolist()) for t in out]


def _comm_device(env: DistEnv) -> torch.device:
    return env.device if env.backend == "nccl" else torch.device("cpu")


# ----------------------------------------------------------------------------- agreement across ranks


def digest(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_everywhere(env: DistEnv, parts: Mapping[str, Any]) -> None:
    """Raise UserError on every rank unless all ranks hold the same `parts` (config, dataset index...).

    Each part is hashed (sha256 of its canonical JSON) and the digests are all-gathered as bytes, so
    large values (a dataset index) cost 32 bytes each; the error names the parts and ranks that
    disagree with rank 0.
    """
    if not env.distributed:
        return
    names = sorted(parts)
    # the part names first (same code everywhere?), so that the digest tensors below have one length
    gathered_names = _all_gather_bytes(env, bytes.fromhex(digest(names)))
    if len(set(gathered_names)) > 1:
        ranks = [r for r, d in enumerate(gathered_names) if d != gathered_names[0]]
        raise UserError(f"the ranks disagree on the training setup: ranks {ranks} check other parts than rank 0 "
                        "(a different version of the code?)")
    mine = b"".join(bytes.fromhex(digest(parts[name])) for name in names)
    gathered = _all_gather_bytes(env, mine)
    problems = []
    for rank, theirs in enumerate(gathered):
        differ = [name for i, name in enumerate(names) if theirs[32 * i:32 * i + 32] != gathered[0][32 * i:32 * i + 32]]
        if differ:
            problems.append(f"rank {rank} differs from rank 0 in {', '.join(differ)}")
    if problems:
        raise UserError("the ranks disagree on the training setup (same command, code and data on every node?): "
                        + "; ".join(problems))


# ----------------------------------------------------------------------------- sharding


def shard(items: int, rank: int, world: int) -> range:
    """Item positions of `rank` when `items` positions are dealt round-robin over `world` ranks."""
    return range(rank, items, world)


def worker_shard(rank: int, world: int) -> tuple[int, int]:
    """(shard index, shard count) of this DataLoader worker across all ranks and their workers."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    return rank * workers + worker, world * workers


def rank_slice(global_batch: int, rank: int, world: int) -> slice:
    """This rank's contiguous slice of a global batch that divides evenly over the world."""
    if global_batch % world:
        raise ValueError(f"a global batch of {global_batch} does not split over {world} ranks")
    per = global_batch // world
    return slice(rank * per, (rank + 1) * per)


@contextlib.contextmanager
def main_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds and caches an index), the others after it."""
    if not env.is_main:
        barrier(env)
    try:
        yield
    finally:
        if env.is_main:
            barrier(env)


# ----------------------------------------------------------------------------- command line


def add_arguments(p: Any, parallel: bool = True) -> None:
    """--device, --grad-accum and (for models that can be sharded) --parallel, shared by every training command."""
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="training device: cpu, cuda (cuda:LOCAL_RANK under torchrun) or auto (cuda when visible); "
                        "bf16 autocast on GPUs that support it, fp32 on CPUs (see --precision)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision of the forward pass: auto (bf16 on GPUs that support it, fp32 on "
                        "CPUs), fp32, or bf16 (on a CPU with AVX512-BF16 about 2.1x faster than fp32)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per optimizer step: global batch = --batch-size x processes x this")
    if parallel:
        p.add_argument("--parallel", default="auto", choices=("auto", "ddp", "fsdp"),
                       help="under torchrun: DistributedDataParallel, FSDP2 (fully_shard), or auto "
                            "(FSDP for the paper / base presets, DDP otherwise)")


@contextlib.contextmanager
def command_env(device: str, precision: str = "auto") -> Iterator[DistEnv]:
    """A training command's DistEnv, its process group shut down when the command ends."""
    env = init(device, precision)
    try:
        yield env
    finally:
        shutdown(env)
