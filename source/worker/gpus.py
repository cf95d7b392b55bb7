"""One worker process per GPU: `worker.py --gpus all|N|0,1`.

A pod with several GPUs runs one ordinary worker per GPU, each a child process that sees only its GPU
(CUDA_VISIBLE_DEVICES), claims its own tasks under its own worker id (`<id>-gpu<N>`) and lease: travel segments are
independent tasks, so the queue spreads a run over the GPUs. This module is the parent that starts and watches them:

- a child that crashes (killed, a fatal error, a hard exit) is started again after a back-off, under the same worker
  id, so it reclaims its own unfinished task at once; one that crashes `max_quick_crashes` times within
  `quick_crash_window` seconds is given up on (the other GPUs keep working);
- a child that exits cleanly (--once, --max-tasks) or cannot start (bad settings: restarting would not help) stays down;
- SIGTERM / SIGINT to the parent is passed on to every child, which gives its task back as a lone worker does; a child
  still running `stop_timeout` seconds later is killed. The children are in their own process group, so a Ctrl-C on
  the terminal reaches them once, through the parent, not twice (a second signal means "stop now"); and each gets
  SIGTERM if the parent dies.

The children's output is copied to the parent's stderr line by line (each line carries its worker id), so their
progress bars, which would interleave, are off.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from loguru import logger

from source.worker.loop import EXIT_FATAL, EXIT_OK, EXIT_STARTUP_FAILED

WORKER_SCRIPT = Path(__file__).resolve().parents[2] / "worker.py"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def visible_gpus(environ: Mapping[str, str], device_count: int) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES values for the children: the entries of this process's
    own CUDA_VISIBLE_DEVICES when it is set (torch numbers them 0.. in that order), else 0..device_count-1."""
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None and given.strip():
        return [entry.strip() for entry in given.split(",") if entry.strip()][:device_count]
    return [str(index) for index in range(device_count)]


def select_gpus(spec: str, visible: Sequence[str]) -> list[str]:
    """`--gpus`: "all", a count N (the first N), or comma-separated indices as torch numbers the visible GPUs ->
    the children's CUDA_VISIBLE_DEVICES values. ValueError naming the flag when it does not fit the visible GPUs."""
    text = spec.strip()
    if not visible:
        raise ValueError(f"--gpus {spec!r}: no CUDA GPU is visible to this process")
    if text == "all":
        return list(visible)
    if "," not in text:
        try:
            count = int(text)
        except ValueError:
            raise ValueError(f"--gpus: expected 'all', a number of GPUs or indices like 0,1; got {spec!r}") from None
        if not 1 <= count <= len(visible):
            raise ValueError(f"--gpus {spec!r}: expected 1 to {len(visible)} GPUs (visible: {len(visible)})")
        return list(visible[:count])
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus: expected indices like 0,1; got {spec!r}") from None
    if len(set(indices)) != len(indices):
        raise ValueError(f"--gpus {spec!r}: a GPU is named twice")
    outside = [index for index in indices if not 0 <= index < len(visible)]
    if outside or not indices:
        raise ValueError(f"--gpus {spec!r}: expected indices from 0 to {len(visible) - 1} (visible: {len(visible)})")
    return [visible[index] for index in indices]


def group_gpus(gpus: Sequence[str], per_worker: int) -> list[str]:
    """The selected GPUs in consecutive groups of `per_worker` (--context-parallel), each one worker's
    CUDA_VISIBLE_DEVICES ("0,1"). ValueError when they do not split evenly."""
    if len(gpus) % per_worker:
        raise ValueError(
            f"--gpus selects {len(gpus)} GPUs, which do not split into workers of --context-parallel {per_worker}"
        )
    return [",".join(gpus[start : start + per_worker]) for start in range(0, len(gpus), per_worker)]


def plan_gpus(spec: str) -> tuple[list[str], list[str]]:
    """(the selected GPUs, the visible ones) as CUDA_VISIBLE_DEVICES values, for `--gpus spec` on this machine."""
    import torch

    visible = visible_gpus(os.environ, torch.cuda.device_count())
    return select_gpus(spec, visible), visible


def child_arguments(argv: Sequence[str], worker_id: str) -> list[str]:
    """The parent's worker.py arguments for one child: without --gpus, with its own --worker-id."""
    kept: list[str] = []
    skip_value = False
    for argument in argv:
        if skip_value:
            skip_value = False
            continue
        if argument in ("--gpus", "--worker-id"):
            skip_value = True
            continue
        if argument.startswith(("--gpus=", "--worker-id=")):
            continue
        kept.append(argument)
    return [*kept, "--worker-id", worker_id]


@dataclass
class _Child:
    gpu: str  # its CUDA_VISIBLE_DEVICES
    worker_id: str
    process: subprocess.Popen[str] | None = None
    restart_at: float | None = None  # a crashed child waits for its back-off
    crashes: list[float] = field(default_factory=list)  # when it crashed, within the quick-crash window
    exit_code: int | None = None  # set once it stays down
    copier: threading.Thread | None = None


class GpuWorkers:
    """Starts one worker process per GPU with `command(worker_id)` and watches them (see the module docstring).

    `run()` returns when every child is down for good: 0 when all ended cleanly, else the worst exit code
    (EXIT_STARTUP_FAILED when a child could not start, EXIT_FATAL when one was given up on)."""

    def __init__(
        self,
        gpus: Sequence[str],
        *,
        base_worker_id: str,
        command: Callable[[str], list[str]],
        environ: Mapping[str, str] | None = None,
        stop_timeout: float = 60.0,
        restart_delay: float = 1.0,
        max_restart_delay: float = 60.0,
        max_quick_crashes: int = 5,
        quick_crash_window: float = 600.0,
        output: IO[str] | None = None,
    ) -> None:
        # a context-parallel worker's GPUs are one entry, "0,1": its id reads <id>-gpu0+1
        self.children = [_Child(gpu, f"{base_worker_id}-gpu{gpu.replace(',', '+')}") for gpu in gpus]
        self.command = command
        self.environ = dict(os.environ if environ is None else environ)
        self.stop_timeout = stop_timeout
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.max_quick_crashes = max_quick_crashes
        self.quick_crash_window = quick_crash_window
        self.output = output if output is not None else sys.stderr
        self._output_lock = threading.Lock()
        self._signals: list[int] = []  # received, not yet passed on (appended by the signal handler)
        self._stop_deadline: float | None = None

    # -- lifetime -------------------------------------------------------------------------------------------------

    def run(self, *, install_signal_handlers: bool = True) -> int:
        previous = {}
        if install_signal_handlers:
            for signum in FORWARDED_SIGNALS:
                previous[signum] = signal.signal(signum, lambda number, _frame: self.request_stop(number))
        try:
            logger.info(
                "one worker per GPU: {}",
                ", ".join(f"{child.worker_id} on GPU {child.gpu}" for child in self.children),
            )
            for child in self.children:
                self._start(child)
            while any(child.exit_code is None for child in self.children):
                self._tick()
                time.sleep(0.1)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for child in self.children:
                if child.copier is not None:
                    child.copier.join(timeout=5)
        codes = [child.exit_code for child in self.children]
        if all(code == EXIT_OK for code in codes):
            return EXIT_OK
        return EXIT_STARTUP_FAILED if EXIT_STARTUP_FAILED in codes else EXIT_FATAL

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Pass `signum` on to every running child (from a signal handler: only recorded here, sent by the loop)."""
        self._signals.append(signum)

    def pids(self) -> dict[str, int | None]:
        """worker id -> the pid of its running process (None while down)."""
        return {
            child.worker_id: child.process.pid if child.process and child.process.poll() is None else None
            for child in self.children
        }

    # -- the loop -------------------------------------------------------------------------------------------------

    def _tick(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if self._stop_deadline is None:
                self._stop_deadline = time.monotonic() + self.stop_timeout
                logger.warning(
                    "received {}: passing it on to the {} GPU workers; each gives its task back",
                    signal.Signals(signum).name,
                    sum(child.exit_code is None for child in self.children),
                )
            for child in self.children:
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signum)
                elif child.exit_code is None:  # waiting for a restart: stays down
                    child.exit_code, child.restart_at = EXIT_OK, None
        now = time.monotonic()
        for child in self.children:
            if child.exit_code is not None:
                continue
            if child.process is None:
                if child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
                continue
            code = child.process.poll()
            if code is None:
                if self._stop_deadline is not None and now > self._stop_deadline:
                    logger.error("{} did not stop within {:.0f} s: killed", child.worker_id, self.stop_timeout)
                    child.process.kill()
                continue
            self._ended(child, code, now)

    def _ended(self, child: _Child, code: int, now: float) -> None:
        child.process = None
        if self._stop_deadline is not None or code == EXIT_OK:
            logger.info("{} on GPU {} exited ({})", child.worker_id, child.gpu, code)
            child.exit_code = EXIT_OK if code == EXIT_OK else EXIT_FATAL
            return
        if code == EXIT_STARTUP_FAILED:
            logger.error("{} on GPU {} could not start (exit {}): not restarted", child.worker_id, child.gpu, code)
            child.exit_code = code
            return
        child.crashes = [at for at in child.crashes if now - at < self.quick_crash_window] + [now]
        if len(child.crashes) >= self.max_quick_crashes:
            logger.error(
                "{} on GPU {} crashed {} times within {:.0f} s (last exit {}): given up on",
                child.worker_id,
                child.gpu,
                len(child.crashes),
                self.quick_crash_window,
                code,
            )
            child.exit_code = EXIT_FATAL
            return
        delay = min(self.max_restart_delay, self.restart_delay * 2 ** (len(child.crashes) - 1))
        logger.warning(
            "{} on GPU {} crashed (exit {}): restarting it in {:.1f} s", child.worker_id, child.gpu, code, delay
        )
        child.restart_at = now + delay

    def _start(self, child: _Child) -> None:
        environment = {**self.environ, "CUDA_VISIBLE_DEVICES": child.gpu}
        environment.pop("HW_GPUS", None)  # a child runs one worker, it does not start more
        process = subprocess.Popen(
            self.command(child.worker_id),
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # signals come through the parent only
            preexec_fn=die_with_parent,
        )
        child.process, child.restart_at = process, None
        child.copier = threading.Thread(
            target=self._copy_output, args=(process,), name=f"output-{child.worker_id}", daemon=True
        )
        child.copier.start()
        logger.info("started {} on GPU {} (pid {})", child.worker_id, child.gpu, process.pid)

    def _copy_output(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._output_lock:
                self.output.write(line)
                self.output.flush()


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In a child process: `signum` when the parent dies (Linux); SIGTERM lets an orphan worker give its task back."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    except (AttributeError, OSError):
        pass  # not Linux: the lease expiry gives the task back instead


def run_per_gpu(gpus: Sequence[str], argv: Sequence[str], *, base_worker_id: str, stop_timeout: float) -> int:
    """`worker.py --gpus ...` with several GPUs: one worker.py process per GPU, supervised (GpuWorkers)."""

    def command(worker_id: str) -> list[str]:
        return [sys.executable, str(WORKER_SCRIPT), *child_arguments(argv, worker_id)]

    return GpuWorkers(gpus, base_worker_id=base_worker_id, command=command, stop_timeout=stop_timeout).run()
