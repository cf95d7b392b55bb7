"""`worker.py --context-parallel N`: one worker whose every generation is split over N GPUs.

The worker process is rank 0: it claims tasks, runs them and talks to the queue as any worker does, with an engine
that first sends each generation to the other ranks (Wan2GP.context_parallel). Ranks 1..N-1 are processes started
here with torch.multiprocessing (spawn), or by torchrun when it started this process (RANK, WORLD_SIZE, LOCAL_RANK
set): each builds the same engine on its own GPU (rank r: the r-th visible one; gloo on CPU processes with --device
cpu, which is what the test suite runs) and follows rank 0's generations until rank 0 exits.

A follower ignores SIGINT and SIGTERM (rank 0 takes them: it finishes or gives back its task, then tells the
followers to stop) and is killed if rank 0 dies. A follower that dies leaves rank 0 waiting in a collective, so rank 0
exits at once with EXIT_FATAL: its task goes back to the queue when its lease runs out (at once when `--gpus`
restarts this worker under the same id), and `--gpus` restarts the whole group.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from loguru import logger

from source.worker.gpus import die_with_parent
from source.worker.logs import configure_logging
from source.worker.loop import EXIT_FATAL, EXIT_OK, EXIT_STARTUP_FAILED
from source.worker.services import build_services
from source.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from Wan2GP.context_parallel import RankGroup

FOLLOWER_STOP_SECONDS = 30.0  # after rank 0 says stop, before a follower still running is killed


def run_context_parallel(settings: WorkerSettings, lead: Callable[[WorkerSettings, RankGroup], int]) -> int:
    """Start (or join, under torchrun) the ranks and run `lead(settings, rank_group)` as rank 0; the exit code."""
    import torch

    from Wan2GP.context_parallel import start_rank_group, stop_followers, stop_rank_group, use_local_rendezvous

    world_size = settings.context_parallel
    launched = torchrun_rank(os.environ)
    if launched is not None:
        rank, local_rank, launched_world = launched
        if launched_world != world_size:
            logger.error("torchrun started {} ranks for --context-parallel {}", launched_world, world_size)
            return EXIT_STARTUP_FAILED
    else:
        rank, local_rank = 0, 0
    if settings.device != "cpu" and torch.cuda.device_count() < world_size:
        logger.error(
            "--context-parallel {} needs {} visible GPUs; this process sees {}",
            world_size,
            world_size,
            torch.cuda.device_count(),
        )
        return EXIT_STARTUP_FAILED
    if launched is not None and rank != 0:
        _follow(rank, world_size, local_rank, settings)
        return EXIT_OK
    followers = None
    if launched is None:
        use_local_rendezvous()
        followers = torch.multiprocessing.start_processes(
            _spawned_follower,
            args=(world_size, settings),
            nprocs=world_size - 1,
            join=False,
            start_method="spawn",
        )
    leading = threading.Event()
    leading.set()
    if followers is not None:  # watched from the start: one that dies before joining would leave rank 0 waiting
        threading.Thread(
            target=_exit_if_a_follower_dies, args=(followers.processes, leading), name="followers", daemon=True
        ).start()
    group = start_rank_group(0, world_size, rank_device(settings, local_rank))
    try:
        code = lead(settings, group)
    except BaseException:
        leading.clear()  # a generation may be half done: the followers cannot be told, only ended
        if followers is not None:
            for process in followers.processes:
                process.kill()
        raise
    leading.clear()  # from here a follower's exit is expected
    stop_followers()
    if followers is not None:
        _join(followers.processes)
    stop_rank_group()
    return code


def torchrun_rank(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(rank, local rank, world size) when torchrun started this process, else None."""
    if not all(name in environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    return int(environ["RANK"]), int(environ["LOCAL_RANK"]), int(environ["WORLD_SIZE"])


def rank_device(settings: WorkerSettings, local_rank: int):
    import torch

    return torch.device("cpu") if settings.device == "cpu" else torch.device("cuda", local_rank)


def _spawned_follower(index: int, world_size: int, settings: WorkerSettings) -> None:
    die_with_parent(signal.SIGKILL)  # rank 0 gone: nothing left to follow, and no task of its own to give back
    _follow(index + 1, world_size, index + 1, settings)


def _follow(rank: int, world_size: int, local_rank: int, settings: WorkerSettings) -> None:
    from Wan2GP.context_parallel import follow, start_rank_group, stop_rank_group

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # rank 0 handles them and then says stop
    configure_logging(
        level=settings.log_level, json_lines=settings.log_json, worker_id=f"{settings.worker_id}-rank{rank}"
    )
    group = start_rank_group(rank, world_size, rank_device(settings, local_rank))
    try:
        follow(build_services(settings, rank_group=group).engine(), group)
    finally:
        stop_rank_group()


def _exit_if_a_follower_dies(processes, leading: threading.Event) -> None:
    while leading.is_set():
        for rank, process in enumerate(processes, start=1):
            if process.exitcode is not None and leading.is_set():
                logger.error(
                    "context-parallel rank {} exited ({}); rank 0 cannot finish a generation without it: exiting",
                    rank,
                    process.exitcode,
                )
                os._exit(EXIT_FATAL)
        time.sleep(0.5)


def _join(processes) -> None:
    deadline = time.monotonic() + FOLLOWER_STOP_SECONDS
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            logger.error("a context-parallel rank did not stop within {:.0f} s: killed", FOLLOWER_STOP_SECONDS)
            process.kill()
            process.join()
