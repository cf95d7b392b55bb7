"""docs/reigh_payloads.md kept honest against the code: the `worker` column of the per-task tables (§2-§5) says what
this worker does with each key Reigh puts into `params`, and these tests hold it to what the payload models report.

For each Reigh-shaped payload (tests/reigh_payloads.py, realistic arguments), parsed the way its handler parses it:
1. every key the payload holds (top level, and one level down in orchestrator_details / individual_segment_params)
   has a row for that level in its task type's table;
2. every key `unused_keys()` reports is documented `not used`, with the code's reason word for word, and no key
   documented `not used` is read (present in the payload but absent from unused_keys()), except the placements in
   DECLARED_BUT_UNREAD below, which the code declares as fields yet reads nowhere (so unused_keys() is silent);
3. the per-task summary lines near the top of the doc match the tables.

Pure Python: no model weights, no I/O beyond reading the doc.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reigh_payloads import (
    WAN_I2V_ADVANCED_2PHASE_MODEL,
    edit_video_params,
    edit_video_portion,
    individual_travel_segment_params,
    join_clips_params,
    lightning_i2v_2phase_config,
    lightning_vace_3phase_config,
    travel_between_images_params,
)

from source.params.base import PayloadModel
from source.params.errors import parse_model
from source.params.join import EditVideoOrchestratorParams, JoinClipsOrchestratorParams
from source.params.payloads import IndividualTravelSegmentParams, TravelOrchestratorParams
from source.tasks.edit_video import parse_edit_video
from source.tasks.individual_segment import parse_individual_segment
from source.tasks.join_clips import parse_join_orchestrator
from source.tasks.travel_orchestrator import parse_orchestrator
from Wan2GP.catalog import load_catalog

DOC = Path(__file__).resolve().parents[2] / "docs" / "reigh_payloads.md"

TOP, OD, ISP = "params", "orchestrator_details", "individual_segment_params"
USED, NOT_USED, REFUSED = "used", "not used", "refused"

# The doc's `level` column (and the [level] labels of worker cells) -> the payload levels they stand for. Travel's
# "od" is params.orchestrator_details (the nested copy one level further down is never read).
LEVEL_NAMES: dict[str, tuple[str, ...]] = {
    "params": (TOP,),
    "od": (OD,),
    "params.orchestrator_details": (OD,),
    "orchestrator_details": (OD,),
    "individual_segment_params": (ISP,),
    "both": (TOP, OD),
}

# Section number -> the task type its table is about.
TASK_SECTIONS = {
    "2": "travel_orchestrator",
    "3": "individual_travel_segment",
    "4": "join_clips_orchestrator",
    "5": "edit_video_orchestrator",
}

# Key placements the code declares as fields but reads nowhere on the task's path, so unused_keys() does not report
# them although the worker ignores them; the doc says `not used` for each. An entry here must stay true (present in
# a payload below, absent from unused_keys(), documented `not used`): fixing the code means deleting the entry.
DECLARED_BUT_UNREAD: dict[str, set[tuple[str, str]]] = {
    # IndividualTravelSegmentParams: "the app's links, read back by complete_task from this same row", copied into
    # the in-memory SegmentTaskParams that generate_segment never reads them from; is_first/is_last likewise.
    "individual_travel_segment": {
        (TOP, "project_id"),
        (TOP, "shot_id"),
        (TOP, "parent_generation_id"),
        (TOP, "child_generation_id"),
        (TOP, "pair_shot_generation_id"),
        (TOP, "generation_name"),
        (TOP, "make_primary_variant"),
        (TOP, "is_first_segment"),
        (TOP, "is_last_segment"),
        (ISP, "pair_shot_generation_id"),
    },
}

# unused_keys() names a few keys after the model's renaming of them; the payload key is what the doc lists.
RENAMED = {"lora_multipliers_by_url": "lora_multipliers"}  # WgpGenerationFields._reigh_multiplier_objects


# ---------------------------------------------------------------------------------------------------------------------
# The doc


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def levels_of(text: str) -> tuple[str, ...]:
    """A `level` cell (or a [label]) -> payload levels; parenthesised remarks are dropped."""
    levels: list[str] = []
    for part in re.sub(r"\([^)]*\)", "", text).split(","):
        name = part.strip()
        if name not in LEVEL_NAMES:
            raise AssertionError(f"unknown level {name!r} in {text!r}")
        levels += [level for level in LEVEL_NAMES[name] if level not in levels]
    return tuple(levels)


def form_of(text: str) -> str:
    for prefix, form in (("used →", USED), ("not used:", NOT_USED), ("refused", REFUSED)):
        if text.startswith(prefix):
            return form
    raise AssertionError(f"a worker cell part must start with `used →`, `not used:` or `refused`: {text!r}")


def worker_parts(cell: str, levels: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """A worker cell -> {level: [(form, text)]}. Parts are separated by <br>; `[level, ...] text` applies to those
    levels only, an unlabelled part to every level of the row."""
    found: dict[str, list[tuple[str, str]]] = {level: [] for level in levels}
    for part in cell.split("<br>"):
        part = part.strip()
        label = re.match(r"\[([^\]]+)\]\s*(.*)", part)
        applies, text = (levels_of(label.group(1)), label.group(2)) if label else (levels, part)
        for level in applies:
            if level not in found:
                raise AssertionError(f"label {label.group(1)!r} names a level the row does not have: {cell!r}")
            found[level].append((form_of(text), text))
    for level, parts in found.items():
        if not parts:
            raise AssertionError(f"no part of the worker cell covers level {level}: {cell!r}")
    return found


Inventory = dict[str, dict[tuple[str, str], list[tuple[str, str]]]]


def read_inventory(text: str) -> Inventory:
    """{task type: {(level, key): [(form, text)]}} from the tables of §2-§5."""
    inventory: Inventory = {task: {} for task in TASK_SECTIONS.values()}
    task = None
    header: list[str] = []
    for line in text.splitlines():
        heading = re.match(r"#{2,3} (\d+)[.\s]", line)
        if heading:
            task, header = TASK_SECTIONS.get(heading.group(1)), []
            continue
        if task is None or not line.startswith("|"):
            continue
        cells = _cells(line)
        if cells and cells[0] == "key":
            header = cells
            continue
        if not header or set("".join(cells)) <= set("-: "):
            continue
        row = dict(zip(header, cells, strict=True))
        keys = re.findall(r"`([^`]+)`", row["key"])
        assert len(keys) == 1, f"§{task}: one key per row, got {row['key']!r}"
        for level, parts in worker_parts(row["worker"], levels_of(row["level"])).items():
            placement = (level, keys[0])
            assert placement not in inventory[task], f"{task}: {placement} has two rows"
            inventory[task][placement] = parts
    return inventory


def category(parts: list[tuple[str, str]]) -> str:
    """One placement's category for the summary: refused if Reigh's app can send a value the worker refuses."""
    forms = {form for form, _ in parts}
    return REFUSED if REFUSED in forms else USED if USED in forms else NOT_USED


def summary_counts(inventory: Inventory) -> dict[str, tuple[int, int, int, int]]:
    counts = {}
    for task, placements in inventory.items():
        categories = [category(parts) for parts in placements.values()]
        counts[task] = (len(categories), *(categories.count(name) for name in (USED, NOT_USED, REFUSED)))
    return counts


def summary_lines(text: str) -> dict[str, tuple[int, int, int, int]]:
    found = {}
    for match in re.finditer(
        r"^- §(\d) .*?: (\d+) keys: (\d+) used / (\d+) not used / (\d+) refused", text, flags=re.MULTILINE
    ):
        found[TASK_SECTIONS[match.group(1)]] = tuple(int(number) for number in match.groups()[1:])
    return found


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def inventory(doc_text: str) -> Inventory:
    return read_inventory(doc_text)


# ---------------------------------------------------------------------------------------------------------------------
# Reigh's payloads, parsed the way the handlers parse them

IMAGES = ["https://example.test/a.png", "https://example.test/b.png", "https://example.test/c.png"]
CLIPS = ["https://example.test/one.mp4", "https://example.test/two.mp4", "https://example.test/three.mp4"]
SOURCE = "https://example.test/source.mp4"
LORA = {"path": "https://example.test/style.safetensors", "strength": 0.8}
IDS = {"run_id": "20260411120000000"}
SHOT, PARENT = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def basic_travel() -> dict[str, Any]:
    return travel_between_images_params(
        IMAGES,
        base_prompts=["a lighthouse at dawn"],
        segment_frames=[61, 61],
        frame_overlap=[10],
        shot_id=SHOT,
        parent_generation_id=PARENT,
        pair_shot_generation_ids=["pair-a", "pair-b"],
        image_generation_ids=["gen-a", "gen-b", "gen-c"],
        generation_name="take 2",
        orchestrator_task_id="sm_travel_orchestrator_26041112_abc123",
        **IDS,
    )


def advanced_travel() -> dict[str, Any]:
    return travel_between_images_params(
        IMAGES,
        base_prompts=["one", "two"],
        segment_frames=[61, 45],
        frame_overlap=[10],
        model_name=WAN_I2V_ADVANCED_2PHASE_MODEL,
        advanced_mode=True,
        phase_config=lightning_i2v_2phase_config(),
        selected_phase_preset_id="__builtin_default_i2v__",
        pair_phase_configs=[None, lightning_i2v_2phase_config([LORA])],
        pair_loras=[[{"path": "https://example.test/pair.safetensors", "strength": 0.5}], None],
        pair_motion_settings=[{"amount_of_motion": 0.7, "motion_mode": "advanced"}, None],
        loras=[LORA],
        enhanced_prompts=["one, enhanced", ""],
        text_before_prompts="cinematic",
        text_after_prompts="35mm",
        shot_id=SHOT,
        parent_generation_id=PARENT,
        **IDS,
    )


def vace_travel() -> dict[str, Any]:
    """model_type vace, raw structure guidance and smooth continuations (the VACE strategy)."""
    return travel_between_images_params(
        IMAGES,
        base_prompts=["one", "two"],
        segment_frames=[61, 61],
        frame_overlap=[10],
        model_type="vace",
        advanced_mode=True,
        phase_config=lightning_vace_3phase_config(),
        travel_guidance={
            "kind": "vace",
            "mode": "raw",
            "videos": [{"path": "https://example.test/guide.mp4", "start_frame": 0, "treatment": "adjust"}],
            "strength": 1.2,
        },
        pair_motion_settings=[None, {"structure_motion_strength": 0.8, "structure_treatment": "clip"}],
        continuation_config={"strategy": "guide_overlap_masked", "overlap_frames": 10},
        **IDS,
    )


def individual_segment() -> dict[str, Any]:
    return individual_travel_segment_params(
        IMAGES[0],
        IMAGES[1],
        project_id="project-1",
        segment_index=1,
        parent_generation_id=PARENT,
        child_generation_id="33333333-3333-4333-8333-333333333333",
        shot_id=SHOT,
        pair_shot_generation_id="pair-b",
        start_image_generation_id="gen-a",
        end_image_generation_id="gen-b",
        start_image_variant_id="variant-a",
        end_image_variant_id="variant-b",
        base_prompt="a lighthouse",
        enhanced_prompt="a lighthouse at dawn, waves",
        phase_config=lightning_i2v_2phase_config([LORA]),
        motion_mode="advanced",
        selected_phase_preset_id="__builtin_default_i2v__",
        loras=[LORA],
        generation_name="regenerated",
        continuation_config={"strategy": "svi_latent_chaining", "overlap_frames": 4},  # unchecked here
        frame_overlap_from_previous=4,
    )


def join_page() -> dict[str, Any]:
    """The Join Clips page: prompts per join, the user's LoRAs, input video size and fps flags."""
    return join_clips_params(
        CLIPS,
        per_join_settings=[{"prompt": "a cut to the sea"}, {"prompt": "a cut to the sky"}],
        loras=[LORA],
        vid2vid_init_strength=0.2,
        audio_url="https://example.test/track.mp3",
        **IDS,
    )


def join_segments() -> dict[str, Any]:
    """The shot editor's "Join segments": a top-level prompt, shot and parent, no per_join_settings."""
    return join_clips_params(
        CLIPS[:2],
        clip_names=["Segment 1", "Segment 2"],
        prompt="smooth transition",
        shot_id=SHOT,
        parent_generation_id=PARENT,
        tool_type="travel-between-images",
        keep_bridging_images=False,
        frontend_defaults=False,
        **IDS,
    )


def _portion(producer: str) -> dict[str, Any]:
    return edit_video_portion(2, 3, fps=16, total_frames=96, gap_frame_count=12, prompt="a wave", producer=producer)


def edit_lightbox() -> dict[str, Any]:
    return edit_video_params(SOURCE, [_portion("lightbox")], source_video_total_frames=96, parent_generation_id=PARENT)


def edit_tool() -> dict[str, Any]:
    return edit_video_params(
        SOURCE,
        [_portion("edit_tool")],
        source_video_total_frames=96,
        producer="edit_tool",
        parent_generation_id=PARENT,
        loras=[LORA],
        **IDS,
    )


# (task type, builder, the handler's parse, the payload model whose unused_keys() the handler reports)
CASES: list[tuple[str, Callable[[], dict[str, Any]], Callable[[Any], Any], type[PayloadModel]]] = [
    ("travel_orchestrator", basic_travel, parse_orchestrator, TravelOrchestratorParams),
    ("travel_orchestrator", advanced_travel, parse_orchestrator, TravelOrchestratorParams),
    ("travel_orchestrator", vace_travel, parse_orchestrator, TravelOrchestratorParams),
    ("individual_travel_segment", individual_segment, parse_individual_segment, IndividualTravelSegmentParams),
    ("join_clips_orchestrator", join_page, parse_join_orchestrator, JoinClipsOrchestratorParams),
    ("join_clips_orchestrator", join_segments, parse_join_orchestrator, JoinClipsOrchestratorParams),
    ("edit_video_orchestrator", edit_lightbox, parse_edit_video, EditVideoOrchestratorParams),
    ("edit_video_orchestrator", edit_tool, parse_edit_video, EditVideoOrchestratorParams),
]
CASE_IDS = [builder.__name__ for _, builder, _, _ in CASES]


def placements(params: dict[str, Any]) -> set[tuple[str, str]]:
    """(level, key) of every key the payload holds, top level and one level down."""
    found = {(TOP, key) for key in params}
    for level in (OD, ISP):
        if isinstance(params.get(level), dict):
            found |= {(level, key) for key in params[level]}
    return found


def reported_unused(model: type[PayloadModel], params: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(level, key) -> reason of what unused_keys() reports at the levels the doc's tables cover."""
    reported = {}
    for path, reason in parse_model(model, params).unused_keys():
        parts = path.split(".")
        if "[" in path or len(parts) > 2 or (len(parts) == 2 and parts[0] not in (OD, ISP)):
            continue
        level, key = (TOP, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        reported[(level, RENAMED.get(key, key))] = reason
    return reported


# ---------------------------------------------------------------------------------------------------------------------
# The checks


def test_every_row_of_the_doc_has_a_worker_entry(doc_text: str):
    assert "TODO" not in doc_text, "docs/reigh_payloads.md still has a TODO"
    rows = [line for line in doc_text.splitlines() if line.startswith("| `")]
    assert len(rows) > 200


@pytest.mark.parametrize(("task", "builder", "parse", "model"), CASES, ids=CASE_IDS)
def test_every_key_reigh_sends_has_a_row(inventory: Inventory, task: str, builder, parse, model):
    params = builder()
    parse(params, catalog=load_catalog())  # the handler accepts it
    missing = sorted(placement for placement in placements(params) if placement not in inventory[task])
    assert not missing, f"{task}: keys of Reigh's payload without a row in docs/reigh_payloads.md: {missing}"


@pytest.mark.parametrize(("task", "builder", "parse", "model"), CASES, ids=CASE_IDS)
def test_not_used_in_the_doc_is_what_the_code_reports(inventory: Inventory, task: str, builder, parse, model):
    params = builder()
    parse(params, catalog=load_catalog())
    reported = reported_unused(model, params)
    unread = DECLARED_BUT_UNREAD.get(task, set())
    problems = []
    for placement in sorted(placements(params)):
        level, key = placement
        parts = inventory[task].get(placement)
        if parts is None:
            continue  # test_every_key_reigh_sends_has_a_row names it
        forms = {form for form, _ in parts}
        texts = [text for form, text in parts if form == NOT_USED]
        where = f"{task} {level}.{key}"
        if placement in reported:
            reason = reported[placement]
            if NOT_USED not in forms or USED in forms:
                problems.append(f"{where}: unused_keys() reports it ({reason!r}); the doc must say `not used`")
            elif not any(reason in text for text in texts):
                problems.append(f"{where}: the doc's `not used` must give the code's reason {reason!r}: {texts}")
        elif placement in unread:
            if forms != {NOT_USED}:
                problems.append(f"{where}: declared but read by nothing; the doc must say `not used`")
        elif NOT_USED in forms:
            problems.append(
                f"{where}: documented `not used`, but the worker uses it (unused_keys() does not report it)"
            )
        if placement not in reported and any(PayloadModel.UNKNOWN_KEY in text for text in texts):
            problems.append(f"{where}: documented as {PayloadModel.UNKNOWN_KEY!r}, but the code knows it now")
    assert not problems, "\n".join(problems)


def test_declared_but_unread_entries_are_still_true(inventory: Inventory):
    """An allow-list entry that no payload exercises, or that unused_keys() now reports, is stale."""
    seen: dict[str, set[tuple[str, str]]] = {task: set() for task in DECLARED_BUT_UNREAD}
    for task, builder, _parse, model in CASES:
        if task not in seen:
            continue
        params = builder()
        reported = reported_unused(model, params)
        for placement in DECLARED_BUT_UNREAD[task] & placements(params):
            assert placement not in reported, f"{task} {placement}: unused_keys() reports it now; drop the entry"
            seen[task].add(placement)
    for task, entries in DECLARED_BUT_UNREAD.items():
        assert entries == seen[task], f"{task}: entries no payload holds: {sorted(entries - seen[task])}"
        for placement in entries:
            assert {form for form, _ in inventory[task][placement]} == {NOT_USED}, f"{task} {placement}"


def test_summary_lines_match_the_tables(doc_text: str, inventory: Inventory):
    assert summary_lines(doc_text) == summary_counts(inventory)


def test_the_parser_reads_levels_and_parts():
    parts = worker_parts("[params] not used: x<br>[orchestrator_details] used → y<br>refused: z", (TOP, OD))
    assert parts == {
        TOP: [(NOT_USED, "not used: x"), (REFUSED, "refused: z")],
        OD: [(USED, "used → y"), (REFUSED, "refused: z")],
    }
    assert levels_of("both (+ params L413)") == (TOP, OD)
    assert levels_of("params (via spread), orchestrator_details") == (TOP, OD)
    with pytest.raises(AssertionError):
        worker_parts("TODO", (TOP,))
