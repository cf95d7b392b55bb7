"""Generated malformed payloads, thrown at the payload models and at the real worker (hypothesis).

Each case takes a valid payload of one task type (travel_orchestrator, travel_segment, a plain generation task) and
breaks one field with a value that is wrong for it: the wrong JSON type, a number out of its range, NaN or
infinity, a list of the wrong length, a string megabytes long, nesting far deeper than any payload needs. The
contract: parsing fails within a bounded time with a message that starts with the path of the broken field (or a
path inside it); on a queue, the worker fails each such task at its first attempt with that message and goes on to
run the healthy task queued behind them.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from source.params.errors import PayloadError, parse_model
from source.params.payloads import GenerationTaskParams, TravelOrchestratorParams
from source.params.travel import SegmentTaskParams
from source.queue import TaskStatus, open_queue
from source.tasks import WorkerServices, default_registry
from source.worker import WorkerSettings, run

PARSE_SECONDS = 1.0  # per payload; a real one parses in about a millisecond

ORCHESTRATOR = {
    "orchestrator_details": {
        "model_name": "wan_tiny_i2v_2_2",
        "input_image_paths_resolved": ["https://example.com/a.png", "https://example.com/b.png"],
        "segment_frames_expanded": [13, 17],
        "frame_overlap_expanded": [4],
        "base_prompts_expanded": ["dawn", "dusk"],
        "parsed_resolution_wh": "128x128",
        "seed_base": 7,
        "fps_helpers": 16,
        "phase_config": {
            "num_phases": 2,
            "steps_per_phase": [2, 2],
            "flow_shift": 5.0,
            "sample_solver": "euler",
            "phases": [
                {
                    "phase": 1,
                    "guidance_scale": 3.0,
                    "loras": [{"url": "https://example.com/l.safetensors", "multiplier": "1.0"}],
                },
                {"phase": 2, "guidance_scale": 1.0, "loras": []},
            ],
        },
    }
}
SEGMENT = {
    "model_name": "wan_tiny_i2v_2_2",
    "parsed_resolution_wh": "64x64",
    "segment_frames_target": 13,
    "start_image_url": "https://example.com/a.png",
    "seed_to_use": 3,
    "generation": {"num_inference_steps": 4, "guidance_scale": 3.0, "flow_shift": 5.0, "lora_names": []},
}
GENERATION = {
    "model": "wan_tiny_t2v",
    "prompt": "a red cat",
    "video_length": 9,
    "num_inference_steps": 2,
    "seed": 1,
    "resolution": "64x64",
    "guidance_scale": 5.0,
    "flow_shift": 5.0,
    "activated_loras": ["https://example.com/l.safetensors"],
    "loras_multipliers": "1.0",
}

# (task type, payload model, base payload, path of each field, what kind of value it holds)
TASKS: dict[str, tuple[type, dict[str, Any], dict[tuple[str | int, ...], str]]] = {
    "travel_orchestrator": (
        TravelOrchestratorParams,
        ORCHESTRATOR,
        {
            ("orchestrator_details", "model_name"): "text",
            ("orchestrator_details", "segment_frames_expanded"): "frame_list",
            ("orchestrator_details", "segment_frames_expanded", 1): "frames",
            ("orchestrator_details", "frame_overlap_expanded", 0): "overlap",
            ("orchestrator_details", "seed_base"): "seed",
            ("orchestrator_details", "fps_helpers"): "fps",
            ("orchestrator_details", "parsed_resolution_wh"): "resolution",
            ("orchestrator_details", "input_image_paths_resolved", 0): "location",
            ("orchestrator_details", "phase_config", "steps_per_phase"): "steps_list",
            ("orchestrator_details", "phase_config", "steps_per_phase", 0): "steps",
            ("orchestrator_details", "phase_config", "flow_shift"): "flow_shift",
            ("orchestrator_details", "phase_config", "model_switch_phase"): "phase_index",
            ("orchestrator_details", "phase_config", "phases", 0, "guidance_scale"): "guidance",
            ("orchestrator_details", "phase_config", "phases", 0, "loras", 0, "multiplier"): "multiplier",
            ("orchestrator_details", "phase_config", "phases", 0, "loras", 0, "url"): "location",
            ("orchestrator_details", "num_inference_steps"): "steps",
            ("orchestrator_details", "guidance2_scale"): "guidance",
        },
    ),
    "travel_segment": (
        SegmentTaskParams,
        SEGMENT,
        {
            ("model_name",): "text",
            ("parsed_resolution_wh",): "resolution",
            ("segment_frames_target",): "frames",
            ("start_image_url",): "location",
            ("seed_to_use",): "seed",
            ("generation", "num_inference_steps"): "steps",
            ("generation", "guidance_scale"): "guidance",
            ("generation", "flow_shift"): "flow_shift",
            ("generation", "lora_names"): "location_list",
        },
    ),
    "t2v": (
        GenerationTaskParams,
        GENERATION,
        {
            ("video_length",): "frames",
            ("num_inference_steps",): "steps",
            ("seed",): "seed",
            ("resolution",): "resolution",
            ("guidance_scale",): "guidance",
            ("flow_shift",): "flow_shift",
            ("activated_loras", 0): "location",
            ("loras_multipliers",): "multiplier",
            ("model_switch_phase",): "phase_index",
            ("switch_threshold",): "switch_threshold",
        },
    ),
}

NOT_JSON_FINITE = (math.nan, math.inf, -math.inf)


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


WRONG_TYPES = st.sampled_from([{"a": 1}, [], ["x"], True])
TEXT_BOMB = st.integers(5_000, 200_000).map(lambda size: "x" * size)
DEEP = st.integers(30, 50).map(_deep)  # within the row's 64-level cap, so the model has to name the field
GENERIC = st.one_of(WRONG_TYPES, DEEP)
NON_NUMERIC_TEXT = st.sampled_from(["six", "", "1e400x", "NaN-ish", "½", "💥", "12 frames"])


def bad_values(*, json_safe: bool) -> dict[str, st.SearchStrategy[Any]]:
    """A strategy of wrong values per kind of field. `json_safe`: no NaN or infinity (they have no JSON form, so a
    queue never holds them; enqueue refuses them, which tests/queue checks)."""
    non_finite = st.nothing() if json_safe else st.sampled_from(NOT_JSON_FINITE)

    def floats(**bounds: Any) -> st.SearchStrategy[float]:
        return st.floats(allow_nan=False, allow_infinity=not json_safe, **bounds)

    def ints_outside(low: int, high: int) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.integers(max_value=low - 1),
            st.integers(min_value=high + 1, max_value=10**30),
            st.sampled_from([2**63, 2**70, -(2**70)]),
            st.integers(-(10**6), 10**6).map(lambda n: n + 0.5),  # not a whole number
            NON_NUMERIC_TEXT,
            non_finite,
            GENERIC,
        )

    def floats_outside(low: float, high: float) -> st.SearchStrategy[Any]:
        return st.one_of(
            floats(max_value=low, exclude_max=True),
            floats(min_value=high, exclude_min=True),
            st.sampled_from([1e308, -1e308]),
            non_finite,
            NON_NUMERIC_TEXT,
            GENERIC,
        )

    return {
        "text": st.one_of(st.integers(), WRONG_TYPES, DEEP),
        "frames": ints_outside(1, 1025),
        "overlap": ints_outside(0, 1025),
        "seed": ints_outside(-1, 2**63 - 1),
        "fps": ints_outside(1, 120),
        "steps": ints_outside(1, 200),
        "phase_index": ints_outside(1, 3),
        "guidance": floats_outside(0.0, 50.0),
        "flow_shift": floats_outside(0.001, 100.0),
        "switch_threshold": floats_outside(0.0, 1000.0),
        "resolution": st.one_of(
            st.sampled_from(["16x1000000", "0x0", "abc", "128x128x3", "-128x128", "9" * 5000 + "x9", "128×128"]),
            st.integers(),
            GENERIC,
        ),
        "location": st.one_of(TEXT_BOMB, st.integers(), WRONG_TYPES, DEEP),
        "location_list": st.one_of(st.lists(TEXT_BOMB, min_size=1, max_size=2), st.just(["x"] * 65), st.integers()),
        "multiplier": st.one_of(
            st.sampled_from(["lots", "1e308", "nan", "inf", "0.5;;", "1.0;abc", "99", "-11", "1,x"]),
            floats(min_value=10, exclude_min=True),
            non_finite,
            st.sampled_from([{"a": 1}, True, ["x"], [[1]]]),  # ([] is valid: no multipliers, each LoRA at 1.0)
        ),
        # ([] is valid: zero segments, the run succeeds with nothing to do, as upstream's does)
        "frame_list": st.one_of(
            st.lists(st.integers(min_value=2000), min_size=2, max_size=3), st.just("13,17"), st.just([13] * 300)
        ),
        "steps_list": st.one_of(
            st.just([]),
            st.just([1, 1, 1, 1]),
            st.lists(st.integers(101, 200), min_size=2, max_size=2),
            st.just("2,2"),
            st.lists(st.integers(max_value=0), min_size=2, max_size=2),
        ),
    }


@dataclass(frozen=True)
class Case:
    task_type: str
    path: tuple[str | int, ...]
    value: Any

    @property
    def dotted(self) -> str:
        text = ""
        for part in self.path:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text

    def payload(self) -> dict[str, Any]:
        payload = copy.deepcopy(TASKS[self.task_type][1])
        target = payload
        for part in self.path[:-1]:
            target = target[part]
        target[self.path[-1]] = self.value
        return payload


def cases(*, json_safe: bool = False) -> st.SearchStrategy[Case]:
    values = bad_values(json_safe=json_safe)

    @st.composite
    def one(draw: st.DrawFn) -> Case:
        task_type = draw(st.sampled_from(sorted(TASKS)))
        fields = TASKS[task_type][2]
        path = draw(st.sampled_from(sorted(fields, key=str)))
        return Case(task_type, path, draw(values[fields[path]]))

    return one()


def _names_the_field(message: str, case: Case) -> bool:
    # The broken field itself, or a path inside it (an item of the list that was broken).
    return (
        message.startswith(f"{case.dotted}: ")
        or message.startswith(f"{case.dotted}[")
        or message.startswith(f"{case.dotted}.")
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_a_malformed_payload_fails_naming_its_field(case: Case) -> None:
    model = TASKS[case.task_type][0]
    started = time.monotonic()
    with pytest.raises(PayloadError) as caught:
        parse_model(model, case.payload())
    assert time.monotonic() - started < PARSE_SECONDS
    message = str(caught.value)
    assert _names_the_field(message, case), f"{case.task_type} {case.dotted}={str(case.value)[:80]!r}: {message}"
    assert len(message) < 1000, "the offending value is cut, never echoed whole"


def test_the_base_payloads_are_valid() -> None:
    """Without this, every generated case would 'fail naming its field' for a reason of the base payload's own."""
    for model, payload, _fields in TASKS.values():
        parse_model(model, copy.deepcopy(payload))


# Two batches: Hypothesis makes its first example the simplest one (the same small case 300 times), the second at
# random; both must pass.
@settings(
    max_examples=2,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    phases=[Phase.generate],  # shrinking a list of 300 takes minutes; a failure is reported as drawn
)
@given(batch=st.lists(cases(json_safe=True), min_size=300, max_size=300))
def test_the_worker_fails_300_malformed_tasks_at_once_and_runs_the_next_one(
    batch: list[Case], tmp_path_factory
) -> None:
    folder: Path = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{folder / 'tasks.db'}"
    queue = open_queue(url)
    try:
        queue.migrate()
        ids = [queue.enqueue(case.task_type, case.payload()) for case in batch]
        healthy = queue.enqueue("debug_sleep", {"seconds": 0, "steps": 1})

        def no_engine() -> Any:
            raise AssertionError("a malformed payload reached the engine")

        settings_ = WorkerSettings(
            db_url=url,
            worker_id="hostile-batch",
            output_dir=folder / "outputs",
            once=True,
            poll_interval=0.05,
            retry_delay_seconds=0.0,
        )
        started = time.monotonic()
        exit_code = run(
            settings_,
            registry=default_registry(),
            services=WorkerServices(engine_factory=no_engine),
            install_signal_handlers=False,
        )
        elapsed = time.monotonic() - started
        assert exit_code == 0
        for case, task_id in zip(batch, ids, strict=True):
            task = queue.get(task_id)
            assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), (case, task.error_message)
            assert _names_the_field(task.error_message, case), (case.dotted, task.error_message)
        assert queue.get(healthy).status is TaskStatus.COMPLETE
        assert elapsed < len(batch) * PARSE_SECONDS, f"{elapsed:.1f} s for {len(batch)} tasks"
    finally:
        queue.close()
