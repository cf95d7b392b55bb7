"""One generation over several GPUs: diffusers' context parallelism (Ulysses) inside one engine per rank.

Every rank holds the whole model on its own GPU and runs the same generation step for step (SPMD): the same request,
the same seed, so the same initial noise and conditioning. Only the transformer's work is split: diffusers'
`enable_parallelism` hooks cut the token sequence into N pieces after the patch embedding, the attention swaps
sequence for heads with an all-to-all (Ulysses: each rank attends over the whole sequence with 1/N of the heads), and
`proj_out` gathers the pieces back, so every rank ends each forward with the same whole prediction and takes the same
sampler step. The text encoder and the VAE's encoder run on every rank on identical inputs (no rank waits for
another, nothing crosses the wire); only rank 0 decodes, writes the video and talks to the queue.

Rank 0 (the leader) wraps its engine in `ContextParallelLeader`: each generation is first broadcast to the other
ranks (`follow` runs them), then run. Rank 0 fetches or builds a model's weights before the others read them
(`leader_first`). A cancel reaches every rank at the same step: `SharedCancel.is_set` is itself a collective (the
largest flag wins), called at the same points on every rank. The device mesh is built and flattened once when the
ranks start (`start_rank_group`), so loading or reloading a model on one rank alone needs no collective.

Ulysses needs the attention heads (40 in the 14B models) and the token count to divide by the number of ranks: a
request whose latent grid does not is refused naming its resolution (`check_divisible`), a model whose heads do not
fails to load. Ring attention is not used: diffusers' native SDPA backend, the one that also runs on the CPU, cannot
return the log-sum-exp it needs (diffusers 0.42.1).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from loguru import logger

from Wan2GP.model_folders import ModelLoadError
from Wan2GP.request import GenerationRequest, InvalidGenerationParams
from Wan2GP.sampler import GenerationCancelled

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from Wan2GP.engine import GenerationResult, ProgressEvent, RenderedVideo, WanEngine

# NVLink multicast can put a shared host's GPUs out of service; it stays off unless the operator turns it on.
NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# The longest a rank may wait in a collective for the others: a model load from disk happens between two of them.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class RankGroup:
    """This process's place among the ranks that share each generation."""

    rank: int
    world_size: int
    device: torch.device
    mesh: DeviceMesh  # ("ring", "ulysses") = (1, world_size), its flattened view already made

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def start_rank_group(
    rank: int, world_size: int, device: torch.device, *, timeout: timedelta = COLLECTIVE_TIMEOUT
) -> RankGroup:
    """Join the process group (NCCL on CUDA, gloo on the CPU; MASTER_ADDR/MASTER_PORT from the environment, as torchrun
    or the worker's launcher sets them) and build the device mesh. Every rank calls this together."""
    for name, value in NVLINK_MULTICAST_OFF.items():
        os.environ.setdefault(name, value)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world_size, timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timeout)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (1, world_size), mesh_dim_names=("ring", "ulysses"))
    # The flattened view is a new process group: made here, by every rank at once, and cached on the mesh, so a later
    # enable_parallelism (a model loaded by one rank only) creates none.
    _ulysses_config(mesh, world_size).setup(rank, world_size, device, mesh)
    return RankGroup(rank=rank, world_size=world_size, device=device, mesh=mesh)


def use_local_rendezvous() -> None:
    """For ranks this process starts on this host: MASTER_ADDR the loopback address (unless set) and MASTER_PORT a
    port free now, which start_rank_group's process group then meets on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)


def stop_rank_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _ulysses_config(mesh: DeviceMesh, world_size: int):
    from diffusers.models._modeling_parallel import ContextParallelConfig

    return ContextParallelConfig(ulysses_degree=world_size, mesh=mesh)


def enable_context_parallel(transformer: torch.nn.Module, group: RankGroup, *, model: str) -> None:
    """Split `transformer`'s sequence over the group's ranks (diffusers' hooks, Wan's own `_cp_plan`)."""
    heads = int(transformer.config.num_attention_heads)
    if heads % group.world_size:
        raise ModelLoadError(
            f"model {model}: its {heads} attention heads do not divide by --context-parallel {group.world_size}"
        )
    with _accelerator_count_for_cpu(group.device):
        transformer.enable_parallelism(config=_ulysses_config(group.mesh, group.world_size))


@contextmanager
def _accelerator_count_for_cpu(device: torch.device) -> Iterator[None]:
    """diffusers 0.42.1 picks the rank's device as `rank % torch.accelerator.device_count()`, a division by zero on a
    machine without an accelerator; on the CPU (gloo, the test suite) it is one device for the call's duration."""
    if device.type != "cpu" or torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def check_divisible(
    latent_shape: tuple[int, ...],
    patch_size: tuple[int, int, int],
    group: RankGroup,
    *,
    width: int,
    height: int,
    num_frames: int,
) -> None:
    """InvalidGenerationParams naming the resolution when the token sequence does not split into equal pieces."""
    frames, rows, columns = latent_shape[2:]
    tokens = (frames // patch_size[0]) * (rows // patch_size[1]) * (columns // patch_size[2])
    if tokens % group.world_size:
        raise InvalidGenerationParams(
            ["resolution"],
            f"resolution: {width}x{height}x{num_frames} makes {tokens} transformer tokens, which do not split over "
            f"--context-parallel {group.world_size} GPUs; choose a size whose token count divides by "
            f"{group.world_size} (e.g. a width and height that are multiples of {16 * group.world_size})",
        )


def leader_first(group: RankGroup, action: Callable[[], None], *, what: str) -> None:
    """Rank 0 runs `action` (fetch or build a model's weights) while the others wait, so they read a finished folder
    instead of racing to write it (and a Hub download happens once). Rank 0's failure is every rank's: the others
    raise ModelLoadError with its message, at the same point."""
    failure = None
    if group.is_leader:
        try:
            action()
        except Exception as error:
            failure = error
    outcome = _broadcast(None if failure is None else f"{what}: {failure}")
    if failure is not None:
        raise failure
    if outcome is not None:
        raise ModelLoadError(outcome)


class SharedCancel:
    """A cancel flag every rank reads at the same points; each read is a collective, so all ranks see the leader's
    cancel at the same step (a follower has no event of its own)."""

    def __init__(self, group: RankGroup, event: threading.Event | None = None) -> None:
        self.group = group
        self.event = event

    def is_set(self) -> bool:
        flag = torch.tensor([1 if self.event is not None and self.event.is_set() else 0], device=self.group.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


@dataclass(frozen=True)
class _Render:
    request: GenerationRequest


@dataclass(frozen=True)
class _Unload:
    pass


@dataclass(frozen=True)
class _Stop:
    pass


def _broadcast(message: Any) -> Any:
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ContextParallelLeader:
    """Rank 0's engine: a WanEngine whose generations every other rank runs with it (see the module docstring). It
    answers what a worker asks of an engine; anything not defined here is the wrapped engine's."""

    def __init__(self, engine: WanEngine, group: RankGroup) -> None:
        assert group.is_leader, "only rank 0 leads"
        self.engine = engine
        self.group = group
        self._lock = threading.Lock()  # one broadcast-then-run at a time: the ranks must see the same order

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate(
        self,
        params: dict[str, Any],
        *,
        output_dir: Path,
        progress: Callable[[ProgressEvent], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        request = self.engine.resolve(params)  # once: a random seed is drawn here and sent, not drawn per rank
        with self._lock:
            _broadcast(_Render(request))
            return self.engine.generate_request(
                request, output_dir=output_dir, progress=progress, cancel=SharedCancel(self.group, cancel)
            )

    def render(
        self,
        request: GenerationRequest,
        *,
        progress: Callable[[ProgressEvent], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> RenderedVideo:
        with self._lock:
            _broadcast(_Render(request))
            return self.engine.render(request, progress=progress, cancel=SharedCancel(self.group, cancel))

    def unload(self) -> None:
        with self._lock:
            _broadcast(_Unload())
            self.engine.unload()


def stop_followers() -> None:
    """Rank 0, when the worker exits (no generation running): the other ranks return from `follow`."""
    _broadcast(_Stop())


def follow(engine: WanEngine, group: RankGroup) -> None:
    """Ranks 1..N-1: run every generation the leader broadcasts, until it says stop. A failure the leader meets too
    (bad input, out of memory, a cancel: all decided by the same inputs at the same point) is logged and the next
    generation awaited; a rank that fails alone leaves the others waiting in a collective until COLLECTIVE_TIMEOUT,
    and the worker's launcher ends the group when one of its processes dies."""
    logger.info("rank {} of {} on {}: following rank 0", group.rank, group.world_size, group.device)
    while True:
        message = _broadcast(None)
        if isinstance(message, _Stop):
            logger.info("rank {}: rank 0 stopped", group.rank)
            return
        if isinstance(message, _Unload):
            engine.unload()
            continue
        assert isinstance(message, _Render), f"unknown message {message!r}"
        try:
            engine.render(message.request, progress=_quiet, cancel=SharedCancel(group), decode=False)
        except GenerationCancelled:
            logger.info("rank {}: generation cancelled by rank 0", group.rank)
        except Exception as error:  # noqa: BLE001 - rank 0 meets the same error and fails the task
            logger.warning("rank {}: generation failed (as on rank 0): {}", group.rank, error)


def _quiet(_event: ProgressEvent) -> None:
    """A follower's progress goes nowhere (rank 0 reports it), and with a callback the engine draws no bar."""
