"""SIGTERM / SIGINT: stop claiming, give the running task a grace period, then ask it to stop.

The signals are noticed through `signal.set_wakeup_fd`: the C-level handler writes the signal number to a pipe that a
watcher thread reads, so the shutdown clock starts even while the main thread is stuck inside a long native call
(a GPU kernel), where a Python-level handler would not run until the call returns.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

from loguru import logger

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ShutdownController:
    """The worker's stop flag. First signal: stop claiming, let the current task finish within `grace_seconds`.
    Second signal: ask the current task to stop now."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._requested_at: float | None = None
        self._immediate = False
        self._previous_handlers: dict[int, object] = {}
        self._previous_wakeup_fd: int | None = None
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str, *, immediate: bool = False) -> None:
        """Stop claiming. `immediate`: the current task is asked to stop now, without a grace period."""
        with self._lock:
            if immediate:
                self._immediate = True
            if self._requested_at is None:
                self._requested_at = time.monotonic()
                logger.warning(
                    "{}: no new tasks; the current one gets {:.0f} s to finish, then is asked to stop and is put "
                    "back to Queued",
                    reason,
                    self.grace_seconds,
                )
            elif not self._immediate:
                self._immediate = True
                logger.warning("{} again: asking the current task to stop now", reason)
        self._event.set()

    def cancel_deadline(self) -> float | None:
        """Monotonic time after which the running task should be asked to stop; None while no stop is requested."""
        with self._lock:
            if self._requested_at is None:
                return None
            return self._requested_at if self._immediate else self._requested_at + self.grace_seconds

    def wait(self, timeout: float) -> bool:
        """Sleeps up to `timeout`; returns True at once if a stop is (or becomes) requested."""
        return self._event.wait(timeout)

    # ------------------------------------------------------------------------------------------ signal plumbing

    def install_signal_handlers(self) -> None:
        """Must be called from the main thread."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        for signum in HANDLED_SIGNALS:
            # A Python-level handler must exist for the wake-up fd to be written; the work happens in the watcher.
            self._previous_handlers[signum] = signal.signal(signum, _ignore_in_main_thread)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, args=(read_fd,), name="signal-watcher", daemon=True)
        self._watcher.start()

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in HANDLED_SIGNALS:
                    self.request(f"received {signal.Signals(signum).name}")

    def uninstall_signal_handlers(self) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd if self._previous_wakeup_fd is not None else -1)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        read_fd, write_fd = self._pipe
        os.close(write_fd)  # the watcher reads EOF and ends
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        os.close(read_fd)
        self._pipe = None


def _ignore_in_main_thread(signum: int, frame: FrameType | None) -> None:
    """The watcher thread handles the signal; raising here (KeyboardInterrupt) would tear the handler apart."""
