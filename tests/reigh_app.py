"""Reigh's side of the tests: a PostgreSQL database with Reigh's schema (tests/reigh_schema.sql, written from its
migrations), rows inserted the way Reigh's app inserts them, and the schema dump the worker must leave unchanged.

The travel row follows `supabase/functions/create-task/resolvers/travelBetweenImages.ts` (banodoco/reigh-app at
3a6fd3d8): `buildTravelBetweenImagesPayload` in basic mode, wrapped by `composeTaskFamilyPayload`, inserted by
`buildQueuedTask` as `{project_id, task_type, params, status: "Queued", created_at, dependant_on: null}`.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from source.queue.testing import temporary_database

SCHEMA_SQL = Path(__file__).with_name("reigh_schema.sql")


@dataclass(frozen=True)
class ReighDatabase:
    url: str
    user_id: str
    project_id: str


@contextmanager
def reigh_database(admin_url: str) -> Iterator[ReighDatabase]:
    """A throw-away database holding Reigh's schema, one user with credits and one project."""
    with temporary_database(admin_url, prefix="hw_reigh") as url:
        user_id, project_id = str(uuid.uuid4()), str(uuid.uuid4())
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(SCHEMA_SQL.read_text())
            connection.execute("INSERT INTO users (id, name, credits) VALUES (%s, 'test user', 1000)", [user_id])
            connection.execute(
                "INSERT INTO projects (id, name, user_id, aspect_ratio) VALUES (%s, 'test project', %s, '16:9')",
                [project_id, user_id],
            )
        yield ReighDatabase(url, user_id, project_id)


def insert_as_app(url: str, project_id: str, task_type: str, params: dict[str, Any]) -> str:
    """A row as the app's create-task function inserts it (Reigh's defaults for every other column)."""
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "INSERT INTO tasks (project_id, task_type, params, status, created_at, dependant_on) "
            "VALUES (%s, %s, %s, 'Queued', now(), NULL) RETURNING id::text",
            [project_id, task_type, json.dumps(params)],
        ).fetchone()
    assert row is not None
    return row[0]


def task_row(url: str, task_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as connection:
        cursor = connection.execute("SELECT *, status::text AS status FROM tasks WHERE id = %s", [task_id])
        names = [column.name for column in cursor.description or []]
        row = cursor.fetchone()
    assert row is not None, f"no task {task_id}"
    return dict(zip(names, row, strict=True))


def schema_dump(url: str) -> str:
    """`pg_dump --schema-only` of Reigh's schemas (everything but the worker's own `headless`), without the random
    `\\restrict` key lines newer pg_dump versions write into every dump."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--exclude-schema=headless", url],
        check=True,
        capture_output=True,
        text=True,
    )
    return "".join(
        line for line in out.stdout.splitlines(keepends=True) if not line.startswith(("\\restrict ", "\\unrestrict "))
    )


def travel_params(
    image_urls: list[str],
    *,
    model_name: str,
    resolution: str,
    segment_frames: list[int],
    frame_overlap: list[int],
    base_prompts: list[str],
    seed: int = 789,
) -> dict[str, Any]:
    """A travel_orchestrator row's params, basic mode, as travelBetweenImages.ts builds them."""
    segments = max(1, len(image_urls) - 1)

    def expand(values: list[Any]) -> list[Any]:
        return values * segments if len(values) == 1 else values

    task_id = f"sm_travel_orchestrator_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex[:6]}"
    run_id = "20261130120000000"
    details: dict[str, Any] = {
        "generation_source": "batch",
        "orchestrator_task_id": task_id,
        "run_id": run_id,
        "input_image_paths_resolved": image_urls,
        "num_new_segments_to_generate": segments,
        "base_prompts_expanded": expand(base_prompts),
        "base_prompt": base_prompts[0],
        "negative_prompts_expanded": [""] * segments,
        "segment_frames_expanded": expand(segment_frames),
        "frame_overlap_expanded": expand(frame_overlap),
        "parsed_resolution_wh": resolution,
        "model_name": model_name,
        "seed_base": seed,
        "steps": 20,
        "after_first_post_generation_saturation": 1,
        "after_first_post_generation_brightness": 0,
        "debug_mode_enabled": False,
        "enhance_prompt": False,
        "show_input_images": True,
        "generation_mode": "batch",
        "dimension_source": "project",
        "amount_of_motion": 0.5,
        "advanced_mode": False,
        "independent_segments": True,
    }
    payload = {
        **details,
        "contract_version": 1,
        "task_family": "travel_between_images",
        "orchestrator_details": details,
        "orchestration_contract": {
            "contract_version": 1,
            "task_family": "travel_between_images",
            "orchestrator_task_id": task_id,
            "run_id": run_id,
            "generation_routing": "orchestrator",
            "sibling_lookup": "run_id",
        },
        "task_view_contract": {
            "contract_version": 1,
            "input_images": image_urls,
            "prompt": base_prompts[0],
            "model_name": model_name,
            "resolution": resolution,
        },
        "family_contract": {
            "contract_version": 1,
            "task_family": "travel_between_images",
            "segment_regeneration_mode": "segment_regen_from_order",
            "image_count": len(image_urls),
            "segment_count": segments,
        },
    }
    return {"tool_type": "travel-between-images", "orchestrator_details": payload}


TINY_TRAVEL_FRAMES = 9 + 13 - 4  # what tiny_travel_params contracts: Σ segment frames − Σ overlaps


def tiny_travel_params(http_server: Any) -> dict[str, Any]:
    """A two-segment travel row for the tiny i2v model at 64x48, its keyframes served as URLs by `http_server` (a
    tests/local_http.LocalServer standing in for Supabase Storage): the app hands the worker URLs, not paths."""
    from source.demo import KEYFRAMES_DIR

    urls = []
    for keyframe in sorted(KEYFRAMES_DIR.glob("*.png")):
        body = keyframe.read_bytes()
        http_server.route("GET", f"/storage/{keyframe.name}", lambda _request, body=body: http_server.reply(body))
        urls.append(f"{http_server.url}/storage/{keyframe.name}")
    return travel_params(
        urls,
        model_name="wan_tiny_i2v_2_2",
        resolution="64x48",
        segment_frames=[9, 13],
        frame_overlap=[4],
        base_prompts=["a lighthouse at dawn", "the same lighthouse at dusk"],
    )
