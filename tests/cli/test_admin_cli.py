"""`python -m source.cli` queue commands, black-box, against real databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from source.queue import ChildSpec, open_queue

ROW_KEYS = {"id", "task_type", "status", "dependant_on", "attempts", "output_location", "error_message"}


def write_json(path: Path, value: object) -> str:
    path.write_text(json.dumps(value), encoding="utf-8")
    return str(path)


def test_enqueue_list_cancel_retry_stats_round_trip(cli, queue_url: str, tmp_path: Path) -> None:
    params_file = write_json(tmp_path / "params.json", {"seconds": 0, "steps": 1})
    first = cli("enqueue", params_file, "--type", "debug_sleep", "--db", queue_url, "--priority", "3")
    assert first.returncode == 0, first.stderr
    first_id = first.last_line

    row_file = write_json(
        tmp_path / "row.json",
        {"task_type": "debug_sleep", "params": {"seconds": 0}, "project_id": "proj-9", "depends_on": [first_id]},
    )
    second = cli("enqueue", row_file, "--db", queue_url)
    assert second.returncode == 0, second.stderr
    second_id = second.last_line
    third = cli(
        "enqueue",
        "-",
        "--db",
        queue_url,
        "--depends-on",
        second_id,
        stdin=json.dumps({"task_type": "debug_sleep", "seconds": 0}),
    )
    assert third.returncode == 0, third.stderr
    third_id = third.last_line

    listed = cli("list", "--json", "--db", queue_url)
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in listed.json()}
    assert set(rows) == {first_id, second_id, third_id}
    assert all(ROW_KEYS <= set(row) for row in rows.values())
    assert rows[first_id]["priority"] == 3 and rows[first_id]["status"] == "Queued"
    assert rows[second_id]["dependant_on"] == first_id and rows[second_id]["project_id"] == "proj-9"
    assert rows[third_id]["dependant_on"] == second_id
    assert rows[third_id]["params"] == {"seconds": 0}, "an upstream-style task_type inside params is taken out"

    cancelled = cli("cancel", first_id, "--db", queue_url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split() == [first_id, second_id, third_id]
    rows = {row["id"]: row for row in cli("list", "--json", "--status", "cancelled", "--db", queue_url).json()}
    assert set(rows) == {first_id, second_id, third_id}
    assert rows[third_id]["error_message"] == f"dependency {first_id} cancelled: cancelled by admin"

    retried = cli("retry", first_id, "--db", queue_url)
    assert retried.returncode == 0, retried.stderr
    assert set(retried.stdout.split()) == {first_id, second_id, third_id}
    stats = cli("stats", "--json", "--db", queue_url)
    assert stats.returncode == 0, stats.stderr
    numbers = stats.json()
    assert numbers["by_status"]["Queued"] == 3 and numbers["by_status"]["Cancelled"] == 0
    assert numbers["ready"] == 1 and numbers["by_type"] == {"debug_sleep": {"Queued": 3}}


def test_show_redacts_secrets_and_lists_children(cli, queue_url: str) -> None:
    queue = open_queue(queue_url)
    try:
        queue.migrate()
        # The key names and values the redaction once missed: apikey, credentials, bearer, signed URLs, auth headers.
        details = {
            "openai_api_key": "sk-LEAK",
            "prompt": "a fox",
            "apikey": "LEAK-1",
            "credentials": {"user": "LEAK-2"},
            "headers": {"Bearer": "LEAK-3", "Authorization": "Basic LEAK-4"},
            "image": "https://store.example/a.png?token=LEAK-5&width=5",
            "note": "Bearer LEAK-6",
            "keyframe_count": 3,
        }
        parent_id = queue.enqueue("travel_orchestrator", {"orchestrator_details": details})
        assert queue.claim("w1", lease_seconds=30) is not None
        seg_id, stitch_id = queue.enqueue_children(
            parent_id,
            [
                ChildSpec("travel_segment", {"hf_token": "hf-LEAK"}, role="segment", segment_index=0),
                ChildSpec("travel_stitch", {}, role="stitch", depends_on=("segment:0",), completes_parent=True),
            ],
        )
        queue.await_children(parent_id, "w1", "waiting for 2 children")
        queue.register_worker("w1", session_id="s", metadata={"gpu": "H100"}, stale_seconds=30)
        queue.beat_worker("w1", session_id="s", status="idle", current_task_id=None, metadata={"gpu": "H100"})
    finally:
        queue.close()

    shown = cli("show", parent_id, "--json", "--db", queue_url)
    assert shown.returncode == 0, shown.stderr
    assert "LEAK" not in shown.stdout
    detail = shown.json()
    assert detail["params"]["orchestrator_details"] == {
        "openai_api_key": "***",
        "prompt": "a fox",
        "apikey": "***",
        "credentials": "***",
        "headers": {"Bearer": "***", "Authorization": "***"},
        "image": "https://store.example/a.png?token=***&width=5",
        "note": "***",
        "keyframe_count": 3,
    }
    assert detail["status"] == "In Progress" and detail["awaiting_children"] is True
    assert detail["progress"] == {"message": "waiting for 2 children"}
    assert [(child["id"], child["role"]) for child in detail["children"]] == [
        (seg_id, "segment"),
        (stitch_id, "stitch"),
    ]
    assert detail["children"][0]["params"] == {"hf_token": "***"}

    human = cli("show", parent_id, "--db", queue_url)
    assert human.returncode == 0, human.stderr
    assert "LEAK" not in human.stdout
    assert "segment 0: travel_segment" in human.stdout and "stitch: travel_stitch" in human.stdout
    assert "awaiting children" in human.stdout

    workers = cli("workers", "--json", "--db", queue_url)
    assert workers.returncode == 0, workers.stderr
    (worker,) = workers.json()
    assert (worker["id"], worker["status"], worker["metadata"]) == ("w1", "idle", {"gpu": "H100"})
    assert worker["last_heartbeat"] is not None


def test_errors_exit_1_with_a_message(cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'errors.db'}"
    typo = cli("list", "--db", f"sqlite:///{tmp_path / 'typo.db'}")
    assert typo.returncode == 1 and "no queue database at" in typo.stderr
    assert not (tmp_path / "typo.db").exists(), "a read-only command must not create a database"
    assert cli("migrate", "--db", url).returncode == 0
    missing = cli("show", "no-such-id", "--db", url)
    assert missing.returncode == 1 and "no task with id 'no-such-id'" in missing.stderr
    escaping = cli(
        "enqueue",
        write_json(tmp_path / "q.json", {}),
        "--type",
        "debug_sleep",
        "--id",
        "../../tmp/x/victim",
        "--db",
        url,
    )
    assert escaping.returncode == 1 and "task_id: expected 1 to 128 characters" in escaping.stderr
    untyped = cli("enqueue", write_json(tmp_path / "p.json", {"seconds": 1}), "--db", url)
    assert untyped.returncode == 1 and "no task type" in untyped.stderr
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    broken = cli("enqueue", str(tmp_path / "broken.json"), "--type", "debug_sleep", "--db", url)
    assert broken.returncode == 1 and "not valid JSON" in broken.stderr
    status = cli("list", "--status", "sleeping", "--db", url)
    assert status.returncode == 1 and "status: expected one of Queued" in status.stderr
    dependency = cli("enqueue", str(tmp_path / "p.json"), "--type", "debug_sleep", "--depends-on", "ghost", "--db", url)
    assert dependency.returncode == 1 and "depends_on[0]: no task with id 'ghost'" in dependency.stderr
    bad_url = cli("list", "--db", "mysql://x/y")
    assert bad_url.returncode == 1 and "expected sqlite:///" in bad_url.stderr


@pytest.mark.parametrize("queue_url", ["sqlite"], indirect=True)
def test_default_database_comes_from_the_environment_and_tables_render(cli, queue_url: str, tmp_path: Path) -> None:
    env = {"HW_DB_URL": queue_url}
    assert cli("migrate", extra_env=env).stdout.strip() == "schema version 3"
    created = cli("enqueue", write_json(tmp_path / "p.json", {"seconds": 0}), "--type", "debug_sleep", extra_env=env)
    assert created.returncode == 0, created.stderr
    table = cli("list", extra_env=env)
    assert table.returncode == 0 and created.last_line in table.stdout and "debug_sleep" in table.stdout
    stats = cli("stats", extra_env=env)
    assert stats.returncode == 0 and "1 task(s), 1 ready to run" in stats.stdout

    # no --db and no environment: the worker's default, ./tasks.db
    assert cli("migrate").returncode == 0
    assert (tmp_path / "tasks.db").exists()


def test_enqueue_row_file_with_extra_columns_takes_its_params(cli, tmp_path: Path) -> None:
    # tests/reproducers/*.json and rows exported from a tasks table carry a description or other columns.
    queue_url = f"sqlite:///{tmp_path / 'tasks.db'}"
    row_file = write_json(
        tmp_path / "row.json",
        {"task_type": "debug_sleep", "description": "a note", "status": "Complete", "params": {"seconds": 0}},
    )
    enqueued = cli("enqueue", row_file, "--db", queue_url)
    assert enqueued.returncode == 0, enqueued.stderr
    (row,) = cli("list", "--json", "--db", queue_url).json()
    assert (row["id"], row["task_type"], row["status"]) == (enqueued.last_line, "debug_sleep", "Queued")
    assert row["params"] == {"seconds": 0}


def test_show_cancel_and_retry_take_a_unique_id_prefix(cli, queue_url: str, tmp_path: Path) -> None:
    # `list` shows shortened ids: what it shows must be enough to act on a task.
    params_file = write_json(tmp_path / "params.json", {"seconds": 0})
    for task_id in ("job-alpha-1", "job-alpha-2", "job-beta-1"):
        made = cli("enqueue", params_file, "--type", "debug_sleep", "--id", task_id, "--db", queue_url)
        assert made.returncode == 0, made.stderr
    shown = cli("show", "job-b", "--json", "--db", queue_url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == "job-beta-1"
    ambiguous = cli("cancel", "job-alpha", "--db", queue_url)
    assert ambiguous.returncode == 1
    assert "ambiguous: it starts job-alpha-1, job-alpha-2; give more of it" in ambiguous.stderr
    cancelled = cli("cancel", "job-alpha-2", "--db", queue_url)
    assert cancelled.returncode == 0 and cancelled.stdout.split() == ["job-alpha-2"]
    retried = cli("retry", "job-alpha-2"[:8], "--db", queue_url)  # "job-alph" is ambiguous too
    assert retried.returncode == 1 and "ambiguous" in retried.stderr
    assert cli("retry", "job-alpha-2", "--db", queue_url).stdout.split() == ["job-alpha-2"]
    too_short = cli("show", "job", "--db", queue_url)
    assert too_short.returncode == 1 and "no task with id 'job'" in too_short.stderr


def test_list_gives_each_task_one_line_however_long_its_error(cli, queue_url: str, tmp_path: Path) -> None:
    queue = open_queue(queue_url)
    try:
        queue.migrate()
        failed = queue.enqueue("debug_sleep", {"seconds": 0})
        queue.enqueue("debug_sleep", {"seconds": 0})
        queue.claim("w", lease_seconds=30)
        queue.fail(failed, "w", "out of memory while decoding: " + "a very long explanation " * 40 + "\nsecond line")
    finally:
        queue.close()
    listed = cli("list", "--db", queue_url)
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2, listed.stdout  # one line each: nothing wrapped onto a second line
    assert all("debug_sleep" in row for row in rows)  # the error does not squeeze the type column away
    assert sum("out of memory" in row for row in rows) == 1 and "second line" not in listed.stdout


def test_enqueue_refuses_what_the_worker_would_refuse(cli, queue_url: str, tmp_path: Path) -> None:
    def enqueue(task_type: str, params: dict, *more: str):
        return cli("enqueue", write_json(tmp_path / "p.json", params), "--type", task_type, "--db", queue_url, *more)

    bad = enqueue("debug_sleep", {"seconds": "six"})
    assert bad.returncode == 2 and "params.seconds" in bad.stderr, bad.stderr
    unknown_type = enqueue("no_such_type", {})
    assert unknown_type.returncode == 2 and "unknown task_type 'no_such_type'" in unknown_type.stderr
    unknown_model = enqueue("t2v", {"model": "no_such_model", "prompt": "a cat"})
    assert (
        unknown_model.returncode == 2 and "model:" in unknown_model.stderr and "no_such_model" in unknown_model.stderr
    )
    travel = json.loads((Path(__file__).resolve().parents[1] / "reproducers" / "seed_001_run2_3phase.json").read_text())
    travel["params"]["orchestrator_details"]["phase_config"]["steps_per_phase"] = [2, 2]  # 3 phases, 2 step counts
    bad_plan = enqueue("travel_orchestrator", travel["params"])
    assert bad_plan.returncode == 2 and "orchestrator_details.phase_config" in bad_plan.stderr, bad_plan.stderr
    assert json.loads(cli("list", "--json", "--db", queue_url).stdout) == []  # nothing reached the queue

    assert enqueue("debug_sleep", {"seconds": 0}).returncode == 0
    # A model the worker loads from its --defaults-dir: the check looks it up in the same folders.
    defaults = tmp_path / "defaults"
    defaults.mkdir()
    (defaults / "my_t2v.json").write_text(json.dumps({"model": {"name": "mine", "architecture": "t2v_1.3B"}}))
    assert enqueue("t2v", {"model": "my_t2v", "prompt": "a cat"}).returncode == 2
    assert enqueue("t2v", {"model": "my_t2v", "prompt": "a cat"}, "--defaults-dir", str(defaults)).returncode == 0
    forced = enqueue("no_such_type", {}, "--no-validate")
    assert forced.returncode == 0, forced.stderr
    assert len(json.loads(cli("list", "--json", "--db", queue_url).stdout)) == 3


def test_the_command_line_entry_point_runs_as_its_own_process(cli_process, tmp_path: Path) -> None:
    # The other tests call the entry point in-process; this one runs `python -m source.cli` as users do.
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    assert cli_process("migrate", "--db", url).stdout.strip() == "schema version 3"
    refused = cli_process("list", "--db", "mysql://x/y")
    assert refused.returncode == 1 and "mysql" in refused.stderr
