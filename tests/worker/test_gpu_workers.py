"""`worker.py --gpus`: one worker process per GPU (source/worker/gpus.py).

No GPU here: the children are real `python worker.py` processes on a real SQLite queue running the `debug_sleep`
task, each given its GPU through CUDA_VISIBLE_DEVICES as on a pod (they record it in their `workers` row). What is
tested is the supervision: the selection of GPUs, each child's own worker id and GPU, a crashed child restarted
(and reclaiming its task), SIGTERM passed on (each child gives its task back), children that cannot start or keep
crashing left down. The GPUs' own throughput is measured on a two-GPU host (bench/README.md).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from log_capture import captured_messages
from loop_helpers import wait_until, worker_process_arguments, worker_process_environment

from source.queue import TaskQueue, TaskStatus
from source.worker import EXIT_FATAL, EXIT_OK, EXIT_STARTUP_FAILED, SettingsError, settings_from_values
from source.worker.gpus import GpuWorkers, child_arguments, select_gpus, visible_gpus

WORKER_SCRIPT = Path(__file__).resolve().parents[2] / "worker.py"


# ---------------------------------------------------------------------------------------------------------------------
# Which GPUs


def test_the_visible_gpus_follow_this_processs_own_cuda_visible_devices() -> None:
    assert visible_gpus({}, 4) == ["0", "1", "2", "3"]
    # a pod that already restricts the process: torch's 0 and 1 are the host's 2 and 5
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}, 2) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, 2) == ["0", "1"]


@pytest.mark.parametrize(
    ("spec", "selected"),
    [("all", ["2", "5", "7"]), ("2", ["2", "5"]), ("1", ["2"]), ("0,2", ["2", "7"]), ("2,0", ["7", "2"])],
)
def test_gpus_are_selected_by_all_count_or_index(spec: str, selected: list[str]) -> None:
    assert select_gpus(spec, ["2", "5", "7"]) == selected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("4", r"expected 1 to 3 GPUs"),
        ("0", r"expected 1 to 3 GPUs"),
        ("0,3", r"expected indices from 0 to 2"),
        ("1,1", r"named twice"),
        ("some", r"expected 'all', a number of GPUs or indices"),
    ],
)
def test_a_selection_that_does_not_fit_the_visible_gpus_is_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"--gpus.*{message}"):
        select_gpus(spec, ["2", "5", "7"])
    with pytest.raises(ValueError, match=r"no CUDA GPU is visible"):
        select_gpus("all", [])


def test_each_child_gets_the_parents_arguments_without_gpus_and_with_its_own_worker_id() -> None:
    argv = ["--db", "sqlite:///q.db", "--gpus", "all", "--worker-id", "pod", "--once", "--gpus=0,1", "--worker-id=x"]
    assert child_arguments(argv, "pod-gpu1") == ["--db", "sqlite:///q.db", "--once", "--worker-id", "pod-gpu1"]


def test_the_gpus_setting_is_checked_and_excludes_a_device(tmp_path: Path) -> None:
    base = {"db": f"sqlite:///{tmp_path / 'q.db'}"}
    assert settings_from_values({**base, "gpus": "0,1"}, environ={}).gpus == "0,1"
    assert settings_from_values(base, environ={"HW_GPUS": "all"}).gpus == "all"
    with pytest.raises(SettingsError, match=r"gpus \(--gpus, HW_GPUS\) and device .*give one"):
        settings_from_values({**base, "gpus": "all", "device": "cuda:0"}, environ={})
    with pytest.raises(SettingsError, match=r"gpus \(--gpus, HW_GPUS\): expected all, a number or indices"):
        settings_from_values({**base, "gpus": "first two"}, environ={})


# ---------------------------------------------------------------------------------------------------------------------
# Supervision, with real worker processes


def worker_command(sqlite_url: str, tmp_path: Path, *extra: str):  # noqa: ANN201
    """What run_per_gpu starts for each GPU: worker.py with the parent's arguments, --gpus dropped."""
    argv = ["--db", sqlite_url, "--gpus", "all", *worker_process_arguments(tmp_path / "outputs"), *extra]
    return lambda worker_id: [sys.executable, str(WORKER_SCRIPT), *child_arguments(argv, worker_id)]


def test_one_worker_per_gpu_each_with_its_gpu_and_worker_id_drains_the_queue(
    sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path
) -> None:
    tasks = [sqlite_queue.enqueue("debug_sleep", {"seconds": 0.3, "steps": 2}) for _ in range(4)]
    workers = GpuWorkers(
        ["0", "1"],
        base_worker_id="pod",
        command=worker_command(sqlite_url, tmp_path, "--max-tasks", "2"),
        environ=worker_process_environment(),
        output=io.StringIO(),
    )

    assert workers.run(install_signal_handlers=False) == EXIT_OK

    finished = [sqlite_queue.get(task_id) for task_id in tasks]
    assert all(task.status is TaskStatus.COMPLETE and task.attempts == 1 for task in finished)
    # two tasks each: --max-tasks 2 reached every child, which then ended cleanly and was not restarted
    assert Counter(task.worker_id for task in finished) == {"pod-gpu0": 2, "pod-gpu1": 2}
    rows = {row.id: row for row in sqlite_queue.list_workers()}
    assert {worker_id: row.metadata["cuda_visible_devices"] for worker_id, row in rows.items()} == {
        "pod-gpu0": "0",
        "pod-gpu1": "1",
    }
    assert {row.status for row in rows.values()} == {"stopped"}
    assert len({row.metadata["pid"] for row in rows.values()}) == 2


def test_a_crashed_worker_is_restarted_and_sigterm_reaches_every_worker(
    sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path
) -> None:
    # the first attempt ends the whole process halfway (a crash); the second completes
    crashing = sqlite_queue.enqueue(
        "debug_sleep", {"seconds": 1.0, "steps": 4, "exit_hard": True, "misbehave_attempts": 1}
    )
    output = io.StringIO()
    workers = GpuWorkers(
        ["0", "1"],
        base_worker_id="pod",
        command=worker_command(
            sqlite_url, tmp_path, "--lease-seconds", "2", "--heartbeat-seconds", "0.5", "--grace-seconds", "0.5"
        ),
        environ=worker_process_environment(),
        restart_delay=0.2,
        stop_timeout=20,  # a signal not passed on ends in killed workers and a non-zero exit, not a hung test
        output=output,
    )
    previous = signal.getsignal(signal.SIGTERM)
    codes: list[int] = []
    seen: dict[str, object] = {}

    def drive() -> None:
        """What happens meanwhile, from another thread; it always ends with the SIGTERM."""
        try:
            wait_until(lambda: all(workers.pids().values()), timeout=30, what="both workers")
            first_pids = workers.pids()
            wait_until(lambda: sqlite_queue.get(crashing).status is TaskStatus.COMPLETE, timeout=90, what="a rerun")
            wait_until(
                lambda: any(pid not in (None, first_pids[wid]) for wid, pid in workers.pids().items()),
                timeout=30,
                what="the crashed worker to run again",
            )
            seen["restarted"] = [wid for wid, pid in workers.pids().items() if pid != first_pids[wid]]
            seen["long_task"] = long_task = sqlite_queue.enqueue("debug_sleep", {"seconds": 60, "steps": 120})
            wait_until(
                lambda: (sqlite_queue.get(long_task).progress or {}).get("step", 0) >= 1,
                timeout=30,
                what="a long task to start",
            )
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            seen["error"] = error
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        # the supervisor in the main thread with its signal handlers, as worker.py runs it
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        with captured_messages("WARNING") as supervisor_log:
            codes.append(workers.run())
        driver.join(timeout=5)
    finally:
        signal.signal(signal.SIGTERM, previous)

    if "error" in seen:
        raise AssertionError(output.getvalue()[-3000:]) from seen["error"]  # type: ignore[misc]
    assert codes == [EXIT_OK], output.getvalue()[-3000:]
    # exactly one child crashed; the supervisor started it again (a new process under the same worker id)
    (restarted,) = seen["restarted"]  # type: ignore[misc]
    assert [line for line in supervisor_log if "crashed" in line] == [
        f"{restarted} on GPU {restarted[-1]} crashed (exit 70): restarting it in 0.2 s"
    ]
    task = sqlite_queue.get(crashing)
    assert (task.status, task.attempts) == (TaskStatus.COMPLETE, 2)  # the crashed attempt, then the rerun
    # SIGTERM reached the worker running the long task: it gave the task back, as a lone worker does
    long_task = sqlite_queue.get(seen["long_task"])  # type: ignore[arg-type]
    assert (long_task.status, long_task.attempts, long_task.worker_id) == (TaskStatus.QUEUED, 0, None)
    assert {row.status for row in sqlite_queue.list_workers()} == {"stopped"}
    assert all(pid is None for pid in workers.pids().values())
    assert "put back to Queued" in output.getvalue()  # the children's log lines come through the parent


def test_a_worker_that_cannot_start_is_not_restarted(sqlite_url: str, tmp_path: Path) -> None:
    output = io.StringIO()
    workers = GpuWorkers(
        ["0", "1"],
        base_worker_id="pod",
        command=worker_command(sqlite_url, tmp_path, "--task-types", "no_such_task"),
        environ=worker_process_environment(),
        restart_delay=0.05,
        output=output,
    )
    assert workers.run(install_signal_handlers=False) == EXIT_STARTUP_FAILED
    # one start per GPU: nobody started them again
    assert sum("cannot start" in line for line in output.getvalue().splitlines()) == 2


def test_a_worker_that_keeps_crashing_is_given_up_on() -> None:
    output = io.StringIO()
    crash = [sys.executable, "-c", "import os; print('crashing on', os.environ['CUDA_VISIBLE_DEVICES']); os._exit(3)"]
    workers = GpuWorkers(
        ["4"],
        base_worker_id="pod",
        command=lambda worker_id: crash,
        environ=worker_process_environment(),
        restart_delay=0.05,
        max_quick_crashes=3,
        output=output,
    )
    assert workers.run(install_signal_handlers=False) == EXIT_FATAL
    assert output.getvalue().splitlines() == ["crashing on 4"] * 3
