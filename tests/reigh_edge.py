"""A local server that speaks Reigh's edge API to the worker, over a real PostgreSQL holding Reigh's schema.

Reigh's edge functions run on Supabase and cannot run here. This is test code of ours, written from their sources
(banodoco/reigh-app `supabase/functions/*` at 3a6fd3d8, summarised with file and line references in
docs/reigh_edge_api.md): the bodies, status codes and row effects the worker relies on, for a caller holding the service-role key
(Supabase runs such requests with the JWT role `service_role`, which is what Reigh's timing trigger lets through; the
SQL here sets that claim for its own writes). Simplified: no personal tokens (any other token is refused as an
unknown one), no credits or per-user limits in the claim, no generations or billing in complete_task, only the
signed-upload mode of complete_task.

    server = ReighEdgeServer(database_url, service_key="...")
    server.url                       # give it to the worker as --supabase-url
    server.fail_next("claim-next-task", LocalServer.reply(b"busy", 503), LocalServer.reply(b"busy", 503))
    server.calls                     # [(function, status), ...] in order
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID

import psycopg
from local_http import LocalServer, Reply, Request
from psycopg.types.json import Jsonb

BUCKET = "image_uploads"
TRANSITIONS = {  # update-task-status/transitions.ts
    "Queued": {"In Progress", "Failed", "Cancelled"},
    "In Progress": {"Complete", "Failed", "Cancelled", "Queued"},
    "Complete": set(),
    "Failed": set(),
    "Cancelled": set(),
}
TEXT_ERRORS = {"claim-next-task", "get-orchestrator-children"}  # errorResponseFormat "text"
ORCHESTRATOR_REFS = (  # _shared/orchestratorReference.ts: where a child names its orchestrator
    "params->'orchestration_contract'->>'orchestrator_task_id'",
    "params->>'orchestrator_task_id_ref'",
    "params->>'orchestrator_task_id'",
    "params->'orchestrator_details'->>'orchestrator_task_id'",
)


def _uuid(value: Any) -> str | None:
    try:
        return str(UUID(str(value)))
    except ValueError:
        return None


class ReighEdgeServer:
    def __init__(self, database_url: str, *, service_key: str, without: tuple[str, ...] = ()) -> None:
        """`without`: functions this deployment lacks (the gateway answers 404 for them)."""
        self.database_url = database_url
        self.service_key = service_key
        self.without = frozenset(without)
        self.http = LocalServer()
        self.http.fallback = self._dispatch
        self.url = self.http.url
        self.calls: list[tuple[str, int]] = []
        self.objects: dict[str, bytes] = {}  # storage path -> bytes
        self.worker_logs: list[dict[str, Any]] = []  # what heartbeats sent (Reigh's system_logs)
        self.pair_prompts: list[dict[str, Any]] = []  # bodies update-shot-pair-prompts accepted
        self._upload_tokens: dict[str, str] = {}
        self._faults: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()

    def stop(self) -> None:
        self.http.stop()

    def fail_next(self, function: str, *replies: Reply) -> None:
        """Answer the next calls of `function` with `replies` (503s, a hang) before serving it normally."""
        with self._lock:
            self._faults.setdefault(function, []).extend(replies)

    def called(self, function: str) -> list[int]:
        return [status for name, status in self.calls if name == function]

    # ------------------------------------------------------------------------------------------ routing

    def _dispatch(self, request: Request) -> Reply:
        path = urlsplit(request.path).path
        if path.startswith("/functions/v1/"):
            name = path.removeprefix("/functions/v1/")
            reply = self._function(name, request)
        elif path == "/rest/v1/rpc/func_worker_heartbeat_with_logs":
            name = "rpc/func_worker_heartbeat_with_logs"
            reply = self._heartbeat(request)
        elif path.startswith(f"/storage/v1/object/upload/sign/{BUCKET}/"):
            name = "storage/upload"
            reply = self._signed_upload(
                request, unquote(path.removeprefix(f"/storage/v1/object/upload/sign/{BUCKET}/"))
            )
        elif path.startswith(f"/storage/v1/object/public/{BUCKET}/"):
            name = "storage/public"
            data = self.objects.get(unquote(path.removeprefix(f"/storage/v1/object/public/{BUCKET}/")))
            reply = LocalServer.reply(data, **{"Content-Type": "video/mp4"}) if data else LocalServer.reply(b"", 404)
        else:
            name, reply = path, LocalServer.reply(b"not found", 404)
        with self._lock:
            self.calls.append((name, reply.status))
        return reply

    def _function(self, name: str, request: Request) -> Reply:
        with self._lock:
            faults = self._faults.get(name)
            fault = faults.pop(0) if faults else None
        if fault is not None:
            return fault
        if name in self.without:  # what Supabase's gateway answers for a function that is not deployed
            body = json.dumps({"code": "NOT_FOUND", "message": "Requested function was not found"}).encode()
            return LocalServer.reply(body, 404, **{"Content-Type": "application/json"})
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return self._error(name, 401, "authentication_failed", "Missing or invalid Authorization header")
        if auth.removeprefix("Bearer ") != self.service_key:  # _shared/auth.ts: then JWT, then PAT lookup
            return self._error(name, 403, "forbidden", "Invalid or expired token")
        handler: Callable[[dict[str, Any]], tuple[int, Any]] | None = getattr(
            self, "_fn_" + name.replace("-", "_"), None
        )
        if handler is None:
            return LocalServer.reply(b"not found", 404)
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return self._error(name, 400, "invalid_json_body", "Invalid JSON body")
        status, answer = handler(body if isinstance(body, dict) else {})
        if answer is None:
            return LocalServer.reply(b"", status)
        if isinstance(answer, str):
            return LocalServer.reply(answer.encode(), status, **{"Content-Type": "text/plain"})
        return LocalServer.reply(
            json.dumps(answer, default=str).encode(), status, **{"Content-Type": "application/json"}
        )

    def _error(self, name: str, status: int, code: str, message: str) -> Reply:
        if name in TEXT_ERRORS:
            return LocalServer.reply(message.encode(), status)
        envelope = {"error": code, "errorCode": code, "message": message, "recoverable": status >= 500}
        return LocalServer.reply(json.dumps(envelope).encode(), status, **{"Content-Type": "application/json"})

    def _connect(self) -> psycopg.Connection[Any]:
        connection = psycopg.connect(self.database_url)
        # A service-role request: auth.role() is 'service_role' for everything it writes.
        connection.execute("SELECT set_config('request.jwt.claim.role', 'service_role', false)")
        return connection

    # ------------------------------------------------------------------------------------------ functions

    def _fn_claim_next_task(self, body: dict[str, Any]) -> tuple[int, Any]:
        """claim_next_task_service_role: the oldest Queued row whose dependencies are all Complete (any task type of
        the run_type), marked In Progress for the worker with generation_started_at."""
        worker_id = str(body.get("worker_id") or "edge_" + secrets.token_hex(8))
        run_type = body.get("run_type") if body.get("run_type") in ("gpu", "api") else None
        with self._connect() as connection:
            row = connection.execute(
                "WITH picked AS (SELECT t.id FROM tasks t LEFT JOIN task_types tt ON tt.name = t.task_type "
                "WHERE t.status = 'Queued' AND all_dependencies_complete(t.dependant_on) "
                "AND (%(run_type)s::text IS NULL OR COALESCE(tt.run_type, 'gpu') = %(run_type)s::text) "
                "ORDER BY t.created_at LIMIT 1 FOR UPDATE OF t SKIP LOCKED) "
                "UPDATE tasks t SET status = 'In Progress', worker_id = %(worker)s, updated_at = now(), "
                "generation_started_at = now() FROM picked WHERE t.id = picked.id "
                "RETURNING t.id::text, t.params, t.task_type, t.project_id::text",
                {"worker": worker_id, "run_type": run_type},
            ).fetchone()
        if row is None:
            return 204, None
        return 200, {"task_id": row[0], "params": row[1], "task_type": row[2], "project_id": row[3]}

    def _fn_update_task_status(self, body: dict[str, Any]) -> tuple[int, Any]:
        task_id, status = _uuid(body.get("task_id")), body.get("status")
        if not body.get("task_id") or not status:
            return 400, "Missing required fields: task_id and status"
        if status not in TRANSITIONS:
            return 400, "Invalid status. Must be one of: Queued, In Progress, Complete, Failed, Cancelled"
        with self._connect() as connection:
            current = connection.execute(
                "SELECT status::text, params FROM tasks WHERE id = %s FOR UPDATE", [task_id]
            ).fetchone()
            if current is None:
                return 500, "Failed to check current task status: no rows"  # what .single() makes of it
            if status not in TRANSITIONS[current[0]]:
                return 409, {
                    "success": False,
                    "task_id": task_id,
                    "current_status": current[0],
                    "requested_status": status,
                    "allowed_transitions": sorted(TRANSITIONS[current[0]]),
                    "message": f"Invalid status transition: {current[0]} → {status}",
                }
            sets, values = ["status = %(status)s::task_status", "updated_at = now()"], {"status": status, "id": task_id}
            if status == "In Progress":
                sets.append("generation_started_at = now()")
            if status == "Complete":
                sets.append("generation_processed_at = now()")
            for field, column in (("output_location", "output_location"), ("error_details", "error_message")):
                if isinstance(body.get(field), str):
                    sets.append(f"{column} = %({field})s")
                    values[field] = body[field]
            if isinstance(body.get("attempts"), int):
                sets.append("attempts = %(attempts)s")
                values["attempts"] = body["attempts"]
            if body.get("clear_worker") is True:
                sets += ["worker_id = NULL", "generation_started_at = NULL"]
            connection.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE id = %(id)s", values)
            if status in ("Failed", "Cancelled"):
                self._cascade(connection, task_id, current[1] or {}, status)
        return 200, {
            "success": True,
            "task_id": task_id,
            "status": status,
            "message": f"Task status updated to '{status}'",
        }

    def _cascade(self, connection: psycopg.Connection[Any], task_id: str, params: dict[str, Any], status: str) -> None:
        """cascade_task_failure: the orchestrator and every unfinished row that names it take the same status."""
        orchestrator = _uuid(params.get("orchestrator_task_id_ref") or "") or (
            task_id if "orchestrator_details" in params else None
        )
        if orchestrator is None:
            return
        refs = " OR ".join(f"{ref} = %(orchestrator)s" for ref in ORCHESTRATOR_REFS)
        connection.execute(
            "UPDATE tasks SET status = %(status)s::task_status, updated_at = now(), "
            "error_message = 'Cascaded ' || lower(%(status)s) || ' from related task ' || %(failed)s "
            f"WHERE status IN ('Queued', 'In Progress') AND (id = %(orchestrator)s::uuid OR {refs})",
            {"status": status, "failed": task_id, "orchestrator": orchestrator},
        )

    def _fn_generate_upload_url(self, body: dict[str, Any]) -> tuple[int, Any]:
        task_id, filename = body.get("task_id"), body.get("filename")
        if not task_id or not filename or not body.get("content_type"):
            return 400, {"error": "task_id, filename, and content_type required"}
        with self._connect() as connection:
            owner = connection.execute(
                "SELECT p.user_id::text FROM tasks t JOIN projects p ON p.id = t.project_id WHERE t.id = %s",
                [_uuid(task_id)],
            ).fetchone()
        if owner is None:
            return 404, {"error": "Task not found"}
        path = f"{owner[0]}/tasks/{task_id}/{filename}"
        answer = {"storage_path": path, **self._signed(path), "expires_at": "in one hour"}
        if body.get("generate_thumbnail_url"):
            thumbnail = f"{owner[0]}/tasks/{task_id}/thumbnails/thumb_{secrets.token_hex(4)}.jpg"
            signed = self._signed(thumbnail)
            answer.update(
                thumbnail_storage_path=thumbnail,
                thumbnail_upload_url=signed["upload_url"],
                thumbnail_token=signed["token"],
            )
        return 200, answer

    def _signed(self, path: str) -> dict[str, str]:
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._upload_tokens[token] = path
        return {"upload_url": f"{self.url}/storage/v1/object/upload/sign/{BUCKET}/{path}?token={token}", "token": token}

    def _signed_upload(self, request: Request, path: str) -> Reply:
        """Storage's PUT /object/upload/sign/<bucket>/<path>?token=…, a multipart body with one file part."""
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        with self._lock:
            allowed = self._upload_tokens.get(token) == path
        if request.method != "PUT" or not allowed:
            return LocalServer.reply(b'{"statusCode":"403","error":"Unauthorized","message":"invalid signature"}', 400)
        header = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(header + request.body)
        files = [part.get_payload(decode=True) for part in message.iter_parts() if part.get_filename()]
        if len(files) != 1:
            return LocalServer.reply(b'{"error":"expected one file part"}', 400)
        self.objects[path] = files[0]
        return LocalServer.reply(
            json.dumps({"Key": f"{BUCKET}/{path}"}).encode(), **{"Content-Type": "application/json"}
        )

    def _fn_complete_task(self, body: dict[str, Any]) -> tuple[int, Any]:
        """Mode 3 (a signed upload's storage_path). The row becomes Complete with the public URL, only if it was In
        Progress (200 either way, as Reigh's); then the travel orchestrator check of orchestratorCore.ts."""
        task_id, path = _uuid(body.get("task_id")), body.get("storage_path")
        if not isinstance(path, str) or not path:
            return 400, {"error": "missing_base64_upload_fields", "message": "file_data and filename are required"}
        parts = path.split("/")
        if len(parts) < 4 or parts[1] != "tasks":
            return 400, {"error": "invalid_storage_path", "message": "only signed-upload paths are served here"}
        public_url = f"{self.url}/storage/v1/object/public/{BUCKET}/{path}"
        with self._connect() as connection:
            row = connection.execute("SELECT task_type, params FROM tasks WHERE id = %s", [task_id]).fetchone()
            if row is None:
                return 404, {"error": "task_not_found", "message": "Task not found"}
            if parts[2] != task_id and "orchestrator" not in row[0]:
                return 403, {"error": "storage_path_access_denied", "message": "storage path of another task"}
            connection.execute(
                "UPDATE tasks SET status = 'Complete', output_location = %s, generation_processed_at = now(), "
                "updated_at = now() WHERE id = %s AND status = 'In Progress'",
                [public_url, task_id],
            )
            if row[0] == "travel_segment":
                self._complete_orchestrator_of_segment(connection, row[1] or {})
        return 200, {"success": True, "public_url": public_url, "thumbnail_url": None, "follow_up": {"status": "ok"}}

    def _complete_orchestrator_of_segment(self, connection: psycopg.Connection[Any], params: dict[str, Any]) -> None:
        orchestrator = _uuid(params.get("orchestrator_task_id_ref") or "")
        if orchestrator is None:
            return
        found = connection.execute(
            "SELECT params FROM tasks WHERE id = %s AND status IN ('Queued', 'In Progress')", [orchestrator]
        ).fetchone()
        if found is None:
            return
        statuses = [
            status
            for (status,) in connection.execute(
                "SELECT status::text FROM tasks WHERE task_type = 'travel_segment' "
                "AND params->>'orchestrator_task_id_ref' = %s",
                [orchestrator],
            ).fetchall()
        ]
        details = (found[0] or {}).get("orchestrator_details") or {}
        expected = int(details.get("num_new_segments_to_generate") or len(statuses))
        if any(status in ("Failed", "Cancelled") for status in statuses):
            new, message = (
                "Failed",
                f"{sum(s in ('Failed', 'Cancelled') for s in statuses)} of {expected} segments failed",
            )
        elif len(statuses) >= expected and all(status == "Complete" for status in statuses):
            new, message = "Complete", None
        else:
            return
        connection.execute(
            "UPDATE tasks SET status = %s::task_status, error_message = %s, generation_processed_at = now(), "
            "updated_at = now() WHERE id = %s",
            [new, message, orchestrator],
        )

    def _fn_create_task(self, body: dict[str, Any]) -> tuple[int, Any]:
        """The worker passthrough resolver: family = an active task_types name, input = the params verbatim."""
        family, project_id, task_input = body.get("family"), body.get("project_id"), body.get("input")
        if not isinstance(family, str) or not family:
            return 400, {"error": "invalid_request_body", "message": "family field is required"}
        if not project_id:
            return 400, {"error": "invalid_request_body", "message": "project_id required"}
        if not isinstance(task_input, dict):
            return 400, {"error": "invalid_request_body", "message": "input must be an object when family is provided"}
        key = body.get("idempotency_key")
        with self._connect() as connection:
            if connection.execute("SELECT 1 FROM projects WHERE id = %s", [_uuid(project_id)]).fetchone() is None:
                return 404, {"error": "project_not_found", "message": "Project not found"}
            known = connection.execute("SELECT 1 FROM task_types WHERE name = %s AND is_active", [family]).fetchone()
            if known is None:
                return 400, {"error": "unknown_task_family", "message": f"Unknown task family: {family}"}
            if key:
                existing = connection.execute("SELECT id::text FROM tasks WHERE idempotency_key = %s", [key]).fetchone()
                if existing:
                    return 200, {"task_id": existing[0], "status": "Task queued", "deduplicated": True}
            dependant_on = task_input.get("dependant_on") if isinstance(task_input.get("dependant_on"), list) else None
            row = connection.execute(
                "INSERT INTO tasks (id, project_id, task_type, params, status, created_at, dependant_on, idempotency_key) "
                "VALUES (COALESCE(%s::uuid, gen_random_uuid()), %s, %s, %s, 'Queued', now(), %s::uuid[], %s) "
                "RETURNING id::text",
                [
                    task_input.get("task_id") if isinstance(task_input.get("task_id"), str) else None,
                    project_id,
                    family,
                    Jsonb(task_input),
                    dependant_on,
                    key,
                ],
            ).fetchone()
        return 200, {"task_id": row[0], "status": "Task queued"}

    def _fn_get_task_status(self, body: dict[str, Any]) -> tuple[int, Any]:
        if not body.get("task_id"):
            return 400, {"error": "task_id is required"}
        with self._connect() as connection:
            row = connection.execute(
                "SELECT status::text FROM tasks WHERE id = %s", [_uuid(body["task_id"])]
            ).fetchone()
        return (200, {"status": row[0]}) if row else (404, {"error": "Task not found"})

    def _fn_get_task_output(self, body: dict[str, Any]) -> tuple[int, Any]:
        if not body.get("task_id"):
            return 400, {"error": "task_id is required"}
        with self._connect() as connection:
            row = connection.execute(
                "SELECT status::text, output_location, params, dependant_on::text[] FROM tasks WHERE id = %s",
                [_uuid(body["task_id"])],
            ).fetchone()
        if row is None:
            return 404, {"error": "Task not found"}
        return 200, {"status": row[0], "output_location": row[1], "params": row[2], "dependant_on": row[3]}

    def _fn_get_predecessor_output(self, body: dict[str, Any]) -> tuple[int, Any]:
        """Path 1 of get-predecessor-output: the task's dependant_on, each with its status and (when Complete) its
        output; the fallback by parent generation is not modelled."""
        if not body.get("task_id"):
            return 400, {"error": "task_id is required"}
        with self._connect() as connection:
            row = connection.execute(
                "SELECT dependant_on::text[] FROM tasks WHERE id = %s", [_uuid(body["task_id"])]
            ).fetchone()
            if row is None:
                return 404, {"error": "Task not found"}
            found = {
                dependency: (status, output)
                for dependency, status, output in connection.execute(
                    "SELECT id::text, status::text, output_location FROM tasks WHERE id = ANY(%s::uuid[])",
                    [row[0] or []],
                ).fetchall()
            }
        if not row[0]:
            return 200, {"predecessor_id": None, "output_location": None, "predecessors": []}
        predecessors = [
            {
                "predecessor_id": dependency,
                "output_location": found[dependency][1] if found.get(dependency, ("",))[0] == "Complete" else None,
                "status": found.get(dependency, ("not_found",))[0],
            }
            for dependency in row[0]
        ]
        all_complete = all(item["status"] == "Complete" and item["output_location"] for item in predecessors)
        first = predecessors[0]
        return 200, {
            "predecessor_id": first["predecessor_id"],
            "output_location": first["output_location"] if all_complete else None,
            "status": "Complete" if all_complete else first["status"],
            "predecessors": predecessors,
            "all_complete": all_complete,
        }

    def _fn_get_completed_segments(self, body: dict[str, Any]) -> tuple[int, Any]:
        """Complete travel_segment rows of a run (params.orchestration_contract.run_id or orchestrator_run_id) with a
        numeric top-level segment_index and an output, sorted by index."""
        run_id = body.get("run_id")
        if not run_id:
            return 400, {"error": "run_id is required"}
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT params->'segment_index', output_location FROM tasks WHERE task_type = 'travel_segment' "
                "AND status = 'Complete' AND (params->'orchestration_contract'->>'run_id' = %(run)s "
                "OR params->>'orchestrator_run_id' = %(run)s) LIMIT 1000",
                {"run": str(run_id)},
            ).fetchall()
        segments = [
            {"segment_index": index, "output_location": output}
            for index, output in rows
            if isinstance(index, int) and output
        ]
        return 200, sorted(segments, key=lambda item: item["segment_index"])

    def _fn_get_orchestrator_children(self, body: dict[str, Any]) -> tuple[int, Any]:
        orchestrator = body.get("orchestrator_task_id")
        if not orchestrator:
            return 400, "orchestrator_task_id is required"
        refs = " OR ".join(f"{ref} = %(id)s" for ref in ORCHESTRATOR_REFS)
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT id::text, task_type, status::text, params, output_location FROM tasks "
                f"WHERE {refs} ORDER BY created_at",
                {"id": str(orchestrator)},
            ).fetchall()
        keys = ("id", "task_type", "status", "params", "output_location")
        return 200, {"tasks": [dict(zip(keys, row, strict=True)) for row in rows]}

    def _fn_update_worker_model(self, body: dict[str, Any]) -> tuple[int, Any]:
        worker_id, model = str(body.get("worker_id") or "").strip(), str(body.get("current_model") or "").strip()
        if not worker_id or not model:
            return 400, f"Missing required field: {'worker_id' if not worker_id else 'current_model'}"
        with self._connect() as connection:
            updated = connection.execute(
                "INSERT INTO workers (id, instance_type, status, last_heartbeat, current_model) "
                "VALUES (%s, %s, 'active', now(), %s) ON CONFLICT (id) DO UPDATE SET "
                "current_model = excluded.current_model, last_heartbeat = now(), status = 'active' RETURNING id",
                [worker_id, body.get("instance_type") or "external", model],
            ).fetchone()
        return 200, {"success": True, "worker_id": updated[0], "current_model": model, "action": "updated"}

    def _fn_update_shot_pair_prompts(self, body: dict[str, Any]) -> tuple[int, Any]:
        """update-shot-pair-prompts/index.ts: shot_id and an enhanced_prompts array are required; each non-empty
        prompt i goes into the metadata of the shot's i-th positioned image (recorded here, no shot tables)."""
        if not isinstance(body.get("shot_id"), str):
            return 400, {"error": "Missing required field: shot_id"}
        if not isinstance(body.get("enhanced_prompts"), list):
            return 400, {"error": "Missing or invalid required field: enhanced_prompts (must be array)"}
        prompts = [value for value in body["enhanced_prompts"] if isinstance(value, str)]
        with self._lock:
            self.pair_prompts.append(body)
        return 200, {"success": True, "updated_count": sum(1 for prompt in prompts if prompt)}

    # ------------------------------------------------------------------------------------------ the heartbeat RPC

    def _heartbeat(self, request: Request) -> Reply:
        """PostgREST POST /rest/v1/rpc/func_worker_heartbeat_with_logs, granted to service_role only."""
        if request.headers.get("authorization", "") != f"Bearer {self.service_key}":
            error = {"code": "42501", "message": "permission denied for function func_worker_heartbeat_with_logs"}
            return LocalServer.reply(json.dumps(error).encode(), 401, **{"Content-Type": "application/json"})
        params = json.loads(request.body or b"{}")
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO workers (id, instance_type, status, last_heartbeat, created_at) "
                "VALUES (%(id)s, 'external', %(status)s, now(), now()) "
                "ON CONFLICT (id) DO UPDATE SET status = excluded.status, last_heartbeat = now()",
                {"id": params["worker_id_param"], "status": params.get("status_param", "active")},
            )
        with self._lock:
            self.worker_logs.extend(params.get("logs_param") or [])
        answer = {"success": True, "heartbeat_updated": True, "logs_inserted": len(params.get("logs_param") or [])}
        return LocalServer.reply(json.dumps(answer).encode(), **{"Content-Type": "application/json"})
