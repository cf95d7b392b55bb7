"""Diagnostic task types: no GPU, no model. Fleet tests, smoke tests and people checking a deployment use them.

`debug_sleep`        sleeps in steps, reporting progress and honouring cancellation; can fail or crash on purpose.
`debug_orchestrator` enqueues `debug_sleep` children (segments, then a stitch that waits for all of them) and waits
                     for them, like travel_orchestrator does; can crash right after enqueuing to test re-runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from source.queue import ChildSpec
from source.storage.paths import safe_component
from source.tasks.context import (
    FatalWorkerError,
    TaskContext,
    TaskInputError,
    TaskOutcome,
    TransientTaskError,
    parse_params,
)

if TYPE_CHECKING:
    from source.tasks.registry import TaskRegistry

HARD_EXIT_CODE = 70  # what a deliberate crash exits with (os._exit: no cleanup, no release, like a killed pod)


class DebugSleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(1.0, ge=0, le=3600, description="total time to sleep")
    steps: int = Field(10, ge=1, le=10_000, description="progress steps the sleep is split into")
    fail: Literal["input", "transient", "fatal", "error"] | None = Field(
        None,
        description="raise this kind of failure halfway: TaskInputError, TransientTaskError, FatalWorkerError "
        "or a plain RuntimeError",
    )
    exit_hard: bool = Field(False, description="halfway, end the whole process at once (a crash)")
    ignore_cancel: bool = Field(
        False,
        description="sleep without honouring cancellation (like a stuck native call), to test the worker's "
        "walk-away at shutdown",
    )
    misbehave_attempts: int | None = Field(
        None, ge=1, le=1000, description="fail / exit_hard only on the first N attempts (None: always)"
    )


class DebugOrchestratorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segments: int = Field(2, ge=0, le=1000)
    segment_seconds: float = Field(0.0, ge=0, le=3600)
    chain: bool = Field(False, description="each segment waits for the previous one (like VACE chaining)")
    stitch: bool = Field(True, description="add a stitch child that waits for every segment and completes the parent")
    fail_segment: int | None = Field(None, ge=0, le=1000, description="this segment fails with a TaskInputError")
    exit_hard_after_enqueue: bool = Field(
        False, description="on the first attempt, crash right after enqueuing the children (before waiting)"
    )


def _crash(ctx: TaskContext, where: str) -> None:
    logger.warning("debug: exiting hard {} (exit code {})", where, HARD_EXIT_CODE)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(HARD_EXIT_CODE)


def debug_sleep(ctx: TaskContext) -> TaskOutcome:
    params = parse_debug_sleep(ctx.params)
    misbehave = params.misbehave_attempts is None or ctx.task.attempts < params.misbehave_attempts
    midway = params.steps // 2
    for step in range(params.steps):
        if step == midway and misbehave:
            if params.exit_hard:
                _crash(ctx, f"at step {step}")
            if params.fail == "input":
                raise TaskInputError("params.fail: debug_sleep was asked to fail with an input error")
            if params.fail == "transient":
                raise TransientTaskError("debug_sleep was asked to fail with a transient error")
            if params.fail == "fatal":
                raise FatalWorkerError("debug_sleep was asked to fail with a fatal worker error")
            if params.fail == "error":
                raise RuntimeError("debug_sleep was asked to raise an unexpected error")
        if params.ignore_cancel:
            time.sleep(params.seconds / params.steps)
        else:
            ctx.sleep(params.seconds / params.steps)
        ctx.report_progress(step + 1, params.steps)
    record = {
        "task_id": ctx.task.id,
        "worker_id": ctx.worker_id,
        "pid": os.getpid(),
        "attempt": ctx.task.attempts + 1,
        "slept_seconds": params.seconds,
    }
    output = Path(ctx.output_dir) / "debug" / f"{safe_component(ctx.task.id)}.json"  # ids come from rows
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record), encoding="utf-8")
    return TaskOutcome(output_location=str(output), result=record, message="slept")


def parse_debug_sleep(raw: Any) -> DebugSleepParams:
    return parse_params(DebugSleepParams, raw)


def parse_debug_orchestrator(raw: Any) -> DebugOrchestratorParams:
    params = parse_params(DebugOrchestratorParams, raw)
    if params.fail_segment is not None and params.fail_segment >= params.segments:
        raise TaskInputError(
            f"params.fail_segment: expected an index below segments={params.segments}; got {params.fail_segment}"
        )
    return params


def debug_orchestrator(ctx: TaskContext) -> TaskOutcome:
    params = parse_debug_orchestrator(ctx.params)
    children: list[ChildSpec] = []
    for index in range(params.segments):
        segment_params: dict[str, object] = {"seconds": params.segment_seconds, "steps": 1}
        if index == params.fail_segment:
            segment_params["fail"] = "input"
        depends_on = (f"segment:{index - 1}",) if params.chain and index > 0 else ()
        children.append(
            ChildSpec("debug_sleep", segment_params, role="segment", segment_index=index, depends_on=depends_on)
        )
    if params.stitch:
        all_segments = tuple(f"segment:{index}" for index in range(params.segments))
        children.append(
            ChildSpec(
                "debug_sleep", {"seconds": 0, "steps": 1}, role="stitch", depends_on=all_segments, completes_parent=True
            )
        )
    ids = ctx.enqueue_children(children)
    logger.info("enqueued (or found) {} children", len(ids))
    if params.exit_hard_after_enqueue and ctx.task.attempts == 0:
        _crash(ctx, "after enqueuing the children")
    return TaskOutcome(awaiting_children=True, message=f"waiting for {len(ids)} children")


def register(registry: TaskRegistry) -> None:
    registry.register("debug_sleep", debug_sleep, check=parse_debug_sleep)
    registry.register("debug_orchestrator", debug_orchestrator, check=parse_debug_orchestrator)
