"""The worker as a drop-in on Reigh's own database: `python worker.py --db URL --once` processes on a real
PostgreSQL database built from Reigh's migrations (tests/reigh_schema.sql), rows inserted the way Reigh's app
inserts them (tests/reigh_app.py), and Reigh's tables left exactly as they were (pg_dump before and after)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from reigh_app import TINY_TRAVEL_FRAMES, ReighDatabase, insert_as_app, schema_dump, task_row, tiny_travel_params


def _task_rows(url: str) -> dict[str, dict]:
    with psycopg.connect(url) as connection:
        ids = [row[0] for row in connection.execute("SELECT id::text FROM tasks ORDER BY created_at").fetchall()]
    return {task_id: task_row(url, task_id) for task_id in ids}


@pytest.mark.slow
def test_a_travel_row_built_by_reigh_runs_to_a_stitched_video_and_reighs_tables_stay_as_they_were(
    reigh_db: ReighDatabase, spawn_worker, http_server, model_cache: Path, ffprobe
) -> None:
    params = tiny_travel_params(http_server)
    dump_before = schema_dump(reigh_db.url)
    orchestrator_id = insert_as_app(reigh_db.url, reigh_db.project_id, "travel_orchestrator", params)
    foreign_id = insert_as_app(reigh_db.url, reigh_db.project_id, "single_image", {"prompt": "not ours"})
    foreign_before = task_row(reigh_db.url, foreign_id)

    worker = spawn_worker(
        reigh_db.url,
        "--once",
        "--device",
        "cpu",
        "--model-cache-dir",
        str(model_cache),
        "--allow-private-urls",  # the stand-in for Supabase Storage is on 127.0.0.1
        worker_id="reigh-gpu-1",
    )
    assert worker.wait(timeout=400) == 0, worker.log_text()[-3000:]

    rows = _task_rows(reigh_db.url)
    orchestrator = rows[orchestrator_id]
    assert orchestrator["status"] == "Complete", orchestrator["error_message"]
    assert orchestrator["result_data"]["output"]["frames"] == TINY_TRAVEL_FRAMES  # Σ frames − Σ overlaps
    probe = ffprobe(orchestrator["output_location"])
    assert (int(probe["nb_read_frames"]), probe["width"], probe["height"]) == (TINY_TRAVEL_FRAMES, 64, 48)
    assert orchestrator["generation_started_at"] < orchestrator["generation_processed_at"]

    children = [row for task_id, row in rows.items() if task_id not in (orchestrator_id, foreign_id)]
    assert sorted(row["task_type"] for row in children) == ["travel_segment", "travel_segment", "travel_stitch"]
    segment_ids = {str(row["id"]) for row in children if row["task_type"] == "travel_segment"}
    for child in children:
        assert child["status"] == "Complete", child["error_message"]
        assert str(child["project_id"]) == reigh_db.project_id  # Reigh's rows all belong to a project
        assert child["worker_id"] == "reigh-gpu-1" and child["attempts"] == 0
        assert child["generation_started_at"] is not None and child["generation_processed_at"] is not None
        assert child["output_location"] and Path(child["output_location"]).is_file()
    stitch = next(row for row in children if row["task_type"] == "travel_stitch")
    assert {str(dependency) for dependency in stitch["dependant_on"]} == segment_ids  # uuid[]: all of them

    assert rows[foreign_id] == foreign_before  # another worker's type: not claimed, not failed, not touched
    assert schema_dump(reigh_db.url) == dump_before  # no column, index, trigger or constraint added

    with psycopg.connect(reigh_db.url) as connection:
        worker_row = connection.execute(
            "SELECT instance_type, status, last_heartbeat IS NOT NULL, current_model FROM workers WHERE id = 'reigh-gpu-1'"
        ).fetchone()
    # Reigh's constraint: active | inactive | terminated; the loaded model feeds Reigh's model-affinity claim
    assert worker_row == ("external", "inactive", True, "wan_tiny_i2v_2_2")


def test_read_only_commands_never_create_anything_on_reighs_database(reigh_db: ReighDatabase) -> None:
    import subprocess
    import sys

    dump_before = schema_dump(reigh_db.url)
    for command in ("list", "stats", "workers"):
        result = subprocess.run(
            [sys.executable, "-m", "source.cli", command, "--db", reigh_db.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert "has no queue schema" in result.stderr and "migrate" in result.stderr
    with psycopg.connect(reigh_db.url) as connection:
        assert connection.execute("SELECT to_regnamespace('headless')").fetchone() == (None,)
    assert schema_dump(reigh_db.url) == dump_before


def test_two_workers_on_reighs_schema_drain_a_batch_exactly_once(reigh_db: ReighDatabase, spawn_worker) -> None:
    with psycopg.connect(reigh_db.url, autocommit=True) as connection:
        # An operator registers the diagnostic type in Reigh's task_types (its foreign key allows no other).
        connection.execute(
            "INSERT INTO task_types (name, category, display_name, base_cost_per_second) "
            "VALUES ('debug_sleep', 'utility', 'Sleep', 0)"
        )
    ids = [
        insert_as_app(reigh_db.url, reigh_db.project_id, "debug_sleep", {"seconds": 0.05, "steps": 1})
        for _ in range(24)
    ]
    workers = [spawn_worker(reigh_db.url, "--once", worker_id=f"reigh-w{index}") for index in range(2)]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    claimed = [task_id for worker in workers for task_id in worker.claimed()]
    assert sorted(claimed) == sorted(ids)  # every row once, none twice
    assert all(worker.claimed() for worker in workers)  # both took part
    rows = _task_rows(reigh_db.url)
    assert {rows[task_id]["status"] for task_id in ids} == {"Complete"}
    assert {rows[task_id]["worker_id"] for task_id in ids} == {"reigh-w0", "reigh-w1"}
