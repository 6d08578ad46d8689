"""A model wrapped for data-parallel training: none (one process), DDP, or FSDP2 (`fully_shard`).

The stage's loss function runs inside the wrapper's `forward` (`LossModule`), so DDP and FSDP see
one forward per micro-batch whatever model methods the loss calls. Checkpoints stay in the
single-process layout: `full_state_dict` and `optimizer_state_dict` gather full tensors (FSDP)
and key the optimizer state by parameter position as `torch.optim.Optimizer.state_dict` does,
so a run saved by any world size resumes under any other.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from lapa.distributed import DistEnv, autocast

log = logging.getLogger(__name__)

PARALLEL = ("auto", "ddp", "fsdp")
FSDP_PRESETS = ("paper", "base")  # presets `--parallel auto` shards: the models the issue sizes for it
_PREFIX = "model."  # LossModule's name for the wrapped model


def choose_parallel(requested: str, preset: str | None, env: DistEnv) -> str:
    """none (a world of one), ddp or fsdp; `auto` shards the large presets and replicates the rest."""
    if requested not in PARALLEL:
        raise ValueError(f"--parallel must be one of {', '.join(PARALLEL)}, got {requested!r}")
    if not env.distributed:
        return "none"
    if requested == "auto":
        return "fsdp" if preset in FSDP_PRESETS else "ddp"
    return requested


class LossModule(nn.Module):
    """`forward(batch) -> (loss, extras)` = `fn(model, batch)`: the unit DDP / FSDP wrap."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Any]]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, Any]:
        return self.fn(self.model, batch)


def _blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The transformer blocks of a model: members of every ModuleList attribute named `blocks`."""
    for name, module in model.named_modules():
        if name.rpartition(".")[2] == "blocks" and isinstance(module, nn.ModuleList):
            yield from module


class ParallelModel:
    """One model, its data-parallel wrapper and what a training step and a checkpoint need of it.

    `replicated` parameters stay whole on every rank under FSDP (LAQ's codebook, rewritten in place
    by dead-code replacement); their gradients are averaged by `sync_replicated_grads`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Any]],
                 env: DistEnv, kind: str = "none", replicated: Iterable[nn.Parameter] = ()) -> None:
        self.model, self.env, self.kind = model.to(env.device), env, kind
        self.replicated = list(replicated) if kind == "fsdp" else []
        wrapper = LossModule(self.model, loss_fn)
        if kind == "none":
            self.train_module: nn.Module = wrapper
        elif kind == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [env.device.index] if env.device.type == "cuda" else None
            # buffers such as codebook usage are per rank by design (the stage syncs what must agree), so
            # no buffer broadcast, at init or per forward; torch's suggested replacement still syncs at init
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                self.train_module = DDP(wrapper, device_ids=ids, broadcast_buffers=False,
                                        find_unused_parameters=True)  # heads differ per stage; unused ones skip
        elif kind == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(env.device.type, (env.world_size,))
            ignored = set(self.replicated)
            for block in _blocks(self.model):
                fully_shard(block, mesh=mesh)
            fully_shard(wrapper, mesh=mesh, ignored_params=ignored or None)
            for p in self.replicated:  # one starting value everywhere
                torch.distributed.broadcast(p.data, src=0)
            self.train_module = wrapper
        else:
            raise ValueError(f"unknown parallel kind {kind!r}")

    # -- a training step

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer steps (FSDP: the local shards, as DTensors)."""
        return list(self.model.parameters())

    def forward(self, batch: Any) -> tuple[torch.Tensor, Any]:
        with autocast(self.env):
            return self.train_module(batch)

    @contextlib.contextmanager
    def accumulating(self, active: bool) -> Iterator[None]:
        """Skip the gradient all-reduce for a micro-batch that is not the last of its step."""
        if active and self.kind == "ddp":
            with self.train_module.no_sync():
                yield
        elif self.kind == "fsdp":
            self.train_module.set_requires_gradient_sync(not active)
            try:
                yield
            finally:
                self.train_module.set_requires_gradient_sync(True)
        else:
            yield

    def sync_replicated_grads(self) -> None:
        if not self.replicated:
            return
        for p in self.replicated:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
                p.grad /= self.env.world_size

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the global gradient norm (every shard and rank counted once); returns it before clipping."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.kind != "fsdp":
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        from torch.distributed.tensor import DTensor

        sharded = [p.grad for p in params if isinstance(p.grad, DTensor)]
        plain = [p.grad for p in params if not isinstance(p.grad, DTensor)]
        sq = torch.zeros((), device=self.env.device, dtype=torch.float32)
        if sharded:
            norm = torch.nn.utils.get_total_norm(sharded)
            sq = sq + (norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2
        if plain:
            sq = sq + torch.nn.utils.get_total_norm(plain).float().to(sq.device) ** 2
        total = sq.sqrt()
        torch.nn.utils.clip_grads_with_norm_(sharded, max_norm, total)
        torch.nn.utils.clip_grads_with_norm_(plain, max_norm, total.to(plain[0].device) if plain else total)
        return float(total)

    # -- checkpoints (collectives under FSDP: every rank calls them)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's full tensors on the CPU; under FSDP only rank 0 gets them (others: {})."""
        if self.kind != "fsdp":
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.train_module, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))
        return {k.removeprefix(_PREFIX): v for k, v in full.items()}

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()` of the unsharded model (positions as keys); {} off rank 0 under FSDP."""
        if self.kind != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(self.train_module, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not full:
            return {}
        position: dict[str, int] = {}
        groups = []
        for group in full["param_groups"]:
            ids = []
            for name in group["params"]:
                position[name] = len(position)
                ids.append(position[name])
            groups.append({**group, "params": ids})
        return {"state": {position[name]: s for name, s in full["state"].items()}, "param_groups": groups}

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a full, position-keyed optimizer state (every rank holds it) into this optimizer."""
        if self.kind != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = {id(p): n for n, p in self.train_module.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
        by_name = {"state": {order[int(i)]: s for i, s in state["state"].items()}, "param_groups": groups}
        set_optimizer_state_dict(self.train_module, optimizer, by_name,
                                 options=StateDictOptions(full_state_dict=True))


class OptimizerView:
    """What `save_training_state` / `load_training_state` ask of an optimizer, through a ParallelModel."""

    def __init__(self, optimizer: torch.optim.Optimizer, parallel: ParallelModel,
                 state: dict[str, Any] | None = None) -> None:
        self.optimizer, self.parallel, self._state = optimizer, parallel, state

    def state_dict(self) -> dict[str, Any]:
        return self._state if self._state is not None else self.parallel.optimizer_state_dict(self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parallel.load_optimizer_state_dict(self.optimizer, state)


@contextlib.contextmanager
def full_state_view(model: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """`model` whose `state_dict()` returns the gathered full `state` for the duration of the block.

    The checkpoint writers call `model.state_dict()`; under FSDP that would give local shards, so
    rank 0 shadows the method with the gathered tensors while it writes, then removes the shadow.
    """
    model.state_dict = lambda *args, **kwargs: state  # type: ignore[method-assign]
    try:
        yield model
    finally:
        del model.state_dict
