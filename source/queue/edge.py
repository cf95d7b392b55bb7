"""Reigh's edge-function API as a queue backend: what a Reigh GPU pod runs with only a Supabase URL and a token.

Every call goes through the `supabase` client (`functions.invoke` for Reigh's edge functions, `rpc` for the worker
heartbeat, `storage` for signed uploads) with the request and response bodies of Reigh's sources
(banodoco/reigh-app `supabase/functions/*`, read at 3a6fd3d8; summarised with references in docs/reigh_edge_api.md):

    claim            claim-next-task {worker_id, run_type: "gpu"}           200 {task_id, params, task_type, project_id} | 204
    dependencies     get-predecessor-output {task_id}                       200 {predecessor_id, output_location,
                                                                                 predecessors: [{predecessor_id, status,
                                                                                 output_location}], all_complete}
    segments         get-completed-segments {run_id, project_id}            200 [{segment_index, output_location}]
    lease check      get-task-status {task_id}                              200 {status}   (optional, see below)
    give back/fail   update-task-status {task_id, status, clear_worker?, attempts?, error_details?}
    complete         generate-upload-url {task_id, filename, content_type, generate_thumbnail_url}
                     -> PUT to the signed URL (Storage) -> complete_task {task_id, storage_path, thumbnail_storage_path?}
    children         create-task {family: task_type, project_id, input: params + task_id + dependant_on[],
                                  idempotency_key}  (the worker passthrough resolver)
                     get-orchestrator-children {orchestrator_task_id}       200 {tasks: [{id, task_type, status, params,
                                                                                          output_location}]}  (optional)
    heartbeat        rpc func_worker_heartbeat_with_logs (service-role key only since 20260311110000)
    loaded model     update-worker-model {worker_id, current_model}

The functions the upstream worker calls are the ones relied on. Reigh also has get-task-status, get-task-output and
get-orchestrator-children for workers; where a deployment answers them they are used (a cancelled row is noticed,
an orchestrator sees all its children), and where it does not (404 from the gateway), the worker carries on without:
no cancellation check, children from get-completed-segments by run id.

What Reigh keeps for itself: generations and billing happen in `complete_task`; a failed or cancelled task cascades
to its orchestrator and siblings inside `update-task-status`; Reigh's `complete_task` marks a travel orchestrator
Complete once its travel_segment children are (without an output), so the stitch's completion also completes the
orchestrator with the stitched video when Reigh has not already. There are no leases: a task is ours while its row
says In Progress (checked on every heartbeat); a dead worker's tasks are Reigh's heartbeat crash recovery's job.

Faults: 5xx, 429, timeouts and network errors are retried with back-off, a bounded number of times, then the call
raises QueueUnavailable; any other 4xx raises EdgeCallFailed naming the function and its answer; 401/403 raise
QueueRefused. The token never appears in a message.
"""

from __future__ import annotations

import json
import mimetypes
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from loguru import logger
from postgrest.exceptions import APIError
from supabase import ClientOptions, create_client
from supabase_auth import SyncMemoryStorage
from supabase_functions.errors import FunctionsHttpError, FunctionsRelayError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from source.queue.models import (
    ChildSpec,
    QueueError,
    QueueRefused,
    QueueUnavailable,
    TaskNotFound,
    TaskNotOwned,
    TaskRecord,
    TaskStatus,
    WorkerRecord,
    child_key,
)
from source.queue.rows import clean_message

T = TypeVar("T")

BUCKET = "image_uploads"  # Reigh's bucket (_shared/storagePaths.ts)
CHILD_KEY = "headless_child"  # our identity of an orchestrator's child, kept in its params: {role, segment_index, ...}
DEFAULT_MAX_ATTEMPTS = 3  # Reigh's crash recovery gives up after 3 attempts too
_FOREIGN_CLAIMS_PER_POLL = 8  # claim-next-task has no task-type filter: how many foreign rows one poll steps over
_PENDING_LOG_LINES = 50  # progress lines kept for the next heartbeat


class EdgeCallFailed(QueueError):
    """An edge function answered 4xx: this call cannot succeed as it is."""

    def __init__(self, function: str, status: int, message: str) -> None:
        super().__init__(f"{function} answered {status}: {message}")
        self.function = function
        self.status = status


def _is_missing_function(error: EdgeCallFailed) -> bool:
    """A 404 that is not a function's own "Task not found": the deployment has no such function."""
    return error.status == 404 and "task not found" not in str(error).lower()


def _about_the_token(message: str) -> bool:
    lowered = message.strip().lower()
    return lowered in ("forbidden", "authentication_failed", "service_role_required") or "token" in lowered


class _Transient(Exception):
    """A 5xx, 429, timeout or network error: worth another try."""


class ReighEdgeQueue:
    """The TaskQueue protocol over Reigh's edge functions (see the module docstring)."""

    dialect = "reigh-edge"
    latest_version = 0  # Reigh owns its schema: nothing to migrate from here

    def __init__(self, supabase_url: str, token: str, *, timeout: float = 30.0, attempts: int = 4) -> None:
        if not supabase_url or not token:
            raise QueueRefused("Reigh's edge API needs --supabase-url and --supabase-access-token")
        self.url = supabase_url.rstrip("/")
        self._token = token
        self._attempts = max(1, attempts)
        self._timeout = timeout
        options = ClientOptions(
            function_client_timeout=max(1, round(timeout)),
            postgrest_client_timeout=max(1, round(timeout)),
            storage_client_timeout=600,
            auto_refresh_token=False,
            persist_session=False,
            storage=SyncMemoryStorage(),
        )
        try:
            self._client = create_client(self.url, token, options=options)
        except Exception as error:  # supabase raises its own types for a malformed URL or key
            raise QueueRefused(f"{self.redacted_url}: {self._scrub(str(error))}") from None
        self._lock = threading.Lock()
        self._claimed: dict[str, TaskRecord] = {}  # rows this process holds, by id
        self._failures: dict[str, int] = {}  # retryable failures seen per task (Reigh's claim does not say)
        self._pending_logs: list[dict[str, Any]] = []
        self._heartbeats_refused = False
        self._missing: set[str] = set()  # optional functions this deployment answered 404 for
        self._predecessors: dict[str, dict[str, Any]] = {}  # task id -> what get-predecessor-output said of it
        self._reported_model: str | None = None  # what update-worker-model was last told (None: nothing yet)
        self._model_reports_refused = False
        self._check_token()

    # ------------------------------------------------------------------------------------------ plumbing

    @property
    def redacted_url(self) -> str:
        return f"reigh-edge:{self.url} (token ***)"

    def __repr__(self) -> str:
        return f"ReighEdgeQueue({self.redacted_url!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _invoke(self, function: str, body: dict[str, Any]) -> Any:
        """One edge function call: its JSON answer (None for an empty 2xx body, e.g. claim-next-task's 204)."""

        def call() -> Any:
            try:
                raw = self._client.functions.invoke(function, {"body": body})
            except FunctionsHttpError as error:
                message = self._scrub(str(error.message or ""))[:300]
                if error.status >= 500 or error.status == 429:
                    raise _Transient(f"{function} answered {error.status}: {message}") from None
                # 401, or a 403 about the token itself (the envelope's code `forbidden`, or the text "Invalid or
                # expired token"); other 403s (storage_path_access_denied, project_forbidden) refuse that call only.
                if error.status == 401 or (error.status == 403 and _about_the_token(message)):
                    raise QueueRefused(
                        f"{function} refused the access token ({error.status}: {message}): check "
                        "--supabase-access-token / SUPABASE_ACCESS_TOKEN"
                    ) from None
                raise EdgeCallFailed(function, error.status, message) from None
            except FunctionsRelayError as error:
                raise _Transient(f"{function}: relay error {error.status}") from None
            except httpx.TimeoutException:
                raise _Transient(f"{function} did not answer within {self._timeout:.0f} s") from None
            except httpx.TransportError as error:
                raise _Transient(f"{function}: {type(error).__name__}: {self._scrub(str(error))}") from None
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if isinstance(text, str):
                return json.loads(text) if text.strip() else None
            return text

        try:
            return self._with_retries(call)
        except json.JSONDecodeError:
            raise QueueUnavailable(f"{function} answered something that is not JSON") from None

    def _with_retries(self, action: Callable[[], T]) -> T:
        """`action`, tried again with back-off while it raises _Transient, `attempts` times in all; then the last
        failure as QueueUnavailable (the worker loop waits and tries the whole step again)."""
        retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            wait=wait_exponential(multiplier=0.5, max=8.0),
            stop=stop_after_attempt(self._attempts),
            reraise=True,
            before_sleep=lambda state: logger.warning(
                "{} (attempt {} of {}); trying again",
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number,
                self._attempts,
            ),
        )
        try:
            return retrying(action)
        except _Transient as error:
            raise QueueUnavailable(f"Reigh's edge API at {self.url}: {error}") from None

    def _check_token(self) -> None:
        """A cheap authenticated call at start-up: a wrong token stops the worker here, not at its first claim."""
        try:
            self._invoke("get-predecessor-output", {"task_id": str(uuid.UUID(int=0))})
        except EdgeCallFailed as error:
            if error.status != 404:  # 404 "Task not found": the token was accepted
                raise

    def _optional(self, function: str, body: dict[str, Any]) -> Any:
        """A call to a function some deployments lack: None (and a warning, once) when it is missing."""
        if function in self._missing:
            return None
        try:
            return self._invoke(function, body)
        except EdgeCallFailed as error:
            if not _is_missing_function(error):
                raise
            self._missing.add(function)
            logger.warning("{} is not deployed here ({}); carrying on without it", function, error)
            return None

    # ------------------------------------------------------------------------------------------ schema

    def migrate(self, *, target_version: int | None = None) -> int:
        return 0

    def schema_version(self) -> int:
        return 0

    def refresh_readiness(self) -> None:
        """Readiness is Reigh's claim's business."""

    def reclaim_expired(self, *, of_worker: str | None = None) -> int:
        """No leases here: Reigh's heartbeat crash recovery and its stale-task cron put a dead worker's tasks back."""
        return 0

    # ------------------------------------------------------------------------------------------ rows

    def _record(
        self,
        task_id: str,
        *,
        task_type: str,
        params: Any,
        status: str,
        project_id: str | None = None,
        output_location: str | None = None,
        dependant_on: Sequence[str] | None = None,
        worker_id: str | None = None,
    ) -> TaskRecord:
        params = params if isinstance(params, dict) else {}
        identity = params.get(CHILD_KEY) if isinstance(params.get(CHILD_KEY), dict) else {}
        segment_index = identity.get("segment_index")
        try:
            task_status = TaskStatus.parse(status)
        except ValueError:
            task_status = TaskStatus.FAILED
        depends_on = tuple(str(item) for item in (dependant_on or ()) if item)
        return TaskRecord(
            id=str(task_id),
            task_type=str(task_type),
            params=params,
            status=task_status,
            dependant_on=depends_on[0] if depends_on else None,
            depends_on=depends_on,
            output_location=output_location,
            project_id=project_id,
            worker_id=worker_id,
            attempts=self._failures.get(str(task_id), 0),
            max_attempts=DEFAULT_MAX_ATTEMPTS,
            priority=0,
            error_message=None,
            progress=None,
            result=None,  # Reigh's edge API has no field for it
            parent_id=str(params["orchestrator_task_id_ref"]) if params.get("orchestrator_task_id_ref") else None,
            role=identity.get("role"),
            segment_index=int(segment_index) if isinstance(segment_index, int) else None,
            created_at=None,
            updated_at=None,
            generation_started_at=None,
            generation_processed_at=None,
            lease_expires_at=None,
            heartbeat_at=None,
            completes_parent=bool(identity.get("completes_parent")),
        )

    def get(self, task_id: str) -> TaskRecord:
        """A row by id: get-task-output where deployed, else what get-predecessor-output told the task that
        depends on it (status and output: what a segment reads of its predecessor)."""
        with self._lock:
            claimed = self._claimed.get(task_id)
            predecessor = self._predecessors.get(task_id)
        try:
            answer = self._optional("get-task-output", {"task_id": task_id})
        except EdgeCallFailed as error:
            if error.status in (400, 404):
                raise TaskNotFound(task_id) from None
            raise
        if answer is None:
            if predecessor is None:
                raise TaskNotFound(task_id, "task id (get-task-output is not deployed and no claimed task names it)")
            answer = {"status": predecessor.get("status"), "output_location": predecessor.get("output_location")}
        params = answer.get("params") or {}
        return self._record(
            task_id,
            task_type=claimed.task_type if claimed else str(params.get("task_type") or ""),
            params=params,
            status=str(answer.get("status")),
            project_id=claimed.project_id if claimed else None,
            output_location=answer.get("output_location"),
            dependant_on=answer.get("dependant_on"),
        )

    def children(self, parent_id: str) -> list[TaskRecord]:
        """get-orchestrator-children where deployed; else the completed segments of the run a claimed child of this
        orchestrator names (get-completed-segments), which is what a stitch needs."""
        answer = self._optional("get-orchestrator-children", {"orchestrator_task_id": parent_id})
        if answer is None:
            return self._completed_segments(parent_id)
        children = [
            self._record(
                row["id"],
                task_type=row.get("task_type", ""),
                params=row.get("params"),
                status=str(row.get("status")),
                output_location=row.get("output_location"),
                dependant_on=(row.get("params") or {}).get("dependant_on"),
            )
            for row in answer.get("tasks") or []
            if str(row.get("id")) != parent_id  # an orchestrator may reference itself in its details
        ]
        return children

    def _completed_segments(self, parent_id: str) -> list[TaskRecord]:
        with self._lock:
            child = next(
                (
                    task
                    for task in self._claimed.values()
                    if task.parent_id == parent_id and task.params.get("orchestrator_run_id")
                ),
                None,
            )
        if child is None:
            return []
        body = {"run_id": str(child.params["orchestrator_run_id"]), "project_id": child.project_id}
        rows = self._invoke("get-completed-segments", body) or []
        return [
            self._record(
                f"{parent_id}:segment:{row['segment_index']}",  # get-completed-segments gives no ids
                task_type="travel_segment",
                params={CHILD_KEY: {"role": "segment", "segment_index": row["segment_index"]}},
                status=TaskStatus.COMPLETE.value,
                output_location=row.get("output_location"),
            )
            for row in rows
            if isinstance(row.get("segment_index"), int)
        ]

    # ------------------------------------------------------------------------------------------ claim

    def claim(
        self, worker_id: str, *, lease_seconds: float, task_types: Sequence[str] | None = None
    ) -> TaskRecord | None:
        """claim-next-task hands out any GPU task type, oldest first: a row of a type this worker does not handle is
        held while the next one is claimed, then given back untouched (Queued, no worker), so it neither blocks the
        rows behind it nor gets failed here."""
        held: list[tuple[str, str]] = []
        try:
            for _ in range(_FOREIGN_CLAIMS_PER_POLL):
                answer = self._invoke("claim-next-task", {"worker_id": worker_id, "run_type": "gpu"})
                if not answer:
                    return None
                task_id, task_type = str(answer["task_id"]), str(answer.get("task_type") or "")
                if task_types and task_type not in task_types:
                    held.append((task_id, task_type))
                    continue
                # The claim's answer has no dependencies: get-predecessor-output lists them, with their outputs.
                found = self._invoke("get-predecessor-output", {"task_id": task_id}) or {}
                predecessors = [item for item in found.get("predecessors") or [] if item.get("predecessor_id")]
                with self._lock:
                    for item in predecessors:
                        self._predecessors[str(item["predecessor_id"])] = item
                record = self._record(
                    task_id,
                    task_type=task_type,
                    params=answer.get("params"),
                    status=TaskStatus.IN_PROGRESS.value,
                    project_id=str(answer.get("project_id") or "") or None,
                    output_location=None,
                    dependant_on=[str(item["predecessor_id"]) for item in predecessors],
                    worker_id=worker_id,
                )
                with self._lock:
                    self._claimed[task_id] = record
                return record
            return None
        finally:
            for task_id, task_type in held:
                logger.info(
                    "claim-next-task handed out {} ({}), a type this worker does not run: given back",
                    task_id,
                    task_type,
                )
                self._invoke("update-task-status", {"task_id": task_id, "status": "Queued", "clear_worker": True})

    def count_ready(self, *, task_types: Sequence[str] | None = None) -> int:
        raise QueueError("counting ready tasks is not part of Reigh's edge API for workers")

    def renew_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Still ours while the row says In Progress (the app may have cancelled it); without get-task-status there
        is no way to ask, and the task is taken to be ours until it ends."""
        try:
            answer = self._optional("get-task-status", {"task_id": task_id})
        except EdgeCallFailed as error:
            if error.status == 404:  # "Task not found": deleted under us
                return False
            raise
        return answer is None or answer.get("status") == TaskStatus.IN_PROGRESS.value

    def share_prompts(self, task_id: str, shot_id: str, prompts: Sequence[str]) -> bool:
        """update-shot-pair-prompts: the app shows the prompts the VLM wrote on the shot's pairs (one per pair, ""
        where it wrote none). Never fails the task: False, with a warning, when the call does not go through."""
        body = {"shot_id": shot_id, "task_id": task_id, "enhanced_prompts": list(prompts)}
        try:
            return self._optional("update-shot-pair-prompts", body) is not None
        except (EdgeCallFailed, QueueError) as error:
            logger.warning("update-shot-pair-prompts failed ({}); the app does not show the written prompts", error)
            return False

    def report_progress(self, task_id: str, worker_id: str, *, step: int, total: int, message: str = "") -> None:
        """Reigh's rows have no progress field (update-task-status refuses In Progress -> In Progress): progress goes
        to Reigh's worker logs (system_logs) with the next heartbeat."""
        percent = round(100.0 * step / total, 1) if total > 0 else 0.0
        line = {
            "timestamp": datetime.now(UTC).isoformat(),
            "level": "INFO",
            "message": clean_message(f"step {step}/{total} ({percent}%) {message}".strip(), 300),
            "task_id": task_id,
            "metadata": {"step": step, "total": total, "percent": percent},
        }
        with self._lock:
            self._pending_logs = [*self._pending_logs, line][-_PENDING_LOG_LINES:]

    # ------------------------------------------------------------------------------------------ finishing

    def _status_update(self, task_id: str, body: dict[str, Any], action: str) -> None:
        try:
            self._invoke("update-task-status", {"task_id": task_id, **body})
        except EdgeCallFailed as error:
            if error.status in (404, 409):  # no longer In Progress: cancelled or finished by someone else
                raise TaskNotOwned(f"cannot {action} task {task_id}: {error}") from None
            raise

    def _forget(self, task_id: str) -> TaskRecord | None:
        """The task has ended here: drop what this process kept about it (a long-running worker must not grow)."""
        with self._lock:
            task = self._claimed.pop(task_id, None)
            for dependency in task.depends_on if task else ():
                self._predecessors.pop(dependency, None)
            return task

    def complete(
        self, task_id: str, worker_id: str | None, *, output_location: str | None, result: dict[str, Any] | None = None
    ) -> None:
        """Uploads the output (and its thumbnail) to Reigh's bucket through signed URLs, then complete_task, which
        writes the public URL into the row and creates the generation the user sees."""
        with self._lock:  # forgotten only once complete: a retried call (the API was unavailable) needs it again
            task = self._claimed.get(task_id)
        if not output_location:  # nothing to upload: complete_task needs a file, update-task-status does not
            self._status_update(task_id, {"status": "Complete"}, "complete")
        else:
            thumbnail = (result or {}).get("thumbnail")
            storage_path, thumbnail_path = self._stored_output(task_id, output_location, thumbnail)
            body: dict[str, Any] = {"task_id": task_id, "storage_path": storage_path}
            if thumbnail_path:
                body["thumbnail_storage_path"] = thumbnail_path
            self._invoke("complete_task", body)
            if task is not None and task.completes_parent and task.parent_id:
                self._complete_orchestrator(task.parent_id, storage_path, thumbnail_path)
        self._forget(task_id)
        self._failures.pop(task_id, None)

    def _complete_orchestrator(self, parent_id: str, storage_path: str, thumbnail_path: str | None) -> None:
        """The final child's video becomes the orchestrator's output (complete_task lets an orchestrator name a
        child's upload); a no-op when Reigh already completed it after its last travel_segment."""
        body: dict[str, Any] = {"task_id": parent_id, "storage_path": storage_path}
        if thumbnail_path:
            body["thumbnail_storage_path"] = thumbnail_path
        try:
            self._invoke("complete_task", body)
            logger.info("orchestrator {} completed with its final child's output", parent_id)
        except EdgeCallFailed as error:
            logger.warning("orchestrator {} could not be completed with the final output: {}", parent_id, error)

    def _stored_output(self, task_id: str, output_location: str | None, thumbnail: Any) -> tuple[str, str | None]:
        if output_location and output_location.startswith(("http://", "https://")):
            path = self._storage_path_of(output_location)
            if path is None:
                raise QueueError(f"complete: {output_location[:200]} is not in this project's {BUCKET} bucket")
            return path, None
        local = Path(output_location) if output_location else None
        if local is None or not local.is_file():
            raise QueueError(f"complete: the output {output_location!r} is not a file this worker can upload")
        thumb = Path(thumbnail) if isinstance(thumbnail, str) and Path(thumbnail).is_file() else None
        answer = self._invoke(
            "generate-upload-url",
            {
                "task_id": task_id,
                "filename": local.name,
                "content_type": _content_type(local),
                "generate_thumbnail_url": thumb is not None,
            },
        )
        self._upload(answer["storage_path"], answer["token"], local)
        thumbnail_path = None
        if thumb is not None and answer.get("thumbnail_storage_path") and answer.get("thumbnail_token"):
            self._upload(answer["thumbnail_storage_path"], answer["thumbnail_token"], thumb)
            thumbnail_path = answer["thumbnail_storage_path"]
        return answer["storage_path"], thumbnail_path

    def _upload(self, storage_path: str, token: str, local: Path) -> None:
        bucket = self._client.storage.from_(BUCKET)

        def put() -> None:
            try:
                bucket.upload_to_signed_url(storage_path, token, local, {"content-type": _content_type(local)})
            except httpx.TransportError as error:
                raise _Transient(f"upload of {storage_path}: {type(error).__name__}") from None
            except Exception as error:  # storage3's StorageApiError carries the HTTP status as text
                status = str(getattr(error, "status", "") or "")
                if status.startswith("5") or status == "429":
                    raise _Transient(f"upload of {storage_path}: Storage answered {status}") from None
                raise QueueError(f"upload of {storage_path} refused: {self._scrub(str(error))[:300]}") from None

        self._with_retries(put)

    def _storage_path_of(self, public_url: str) -> str | None:
        """`{url}/storage/v1/object/public/image_uploads/<path>` -> `<path>` (a row's output in Reigh's bucket)."""
        prefix = f"{self.url}/storage/v1/object/public/{BUCKET}/"
        return public_url[len(prefix) :] if public_url.startswith(prefix) else None

    def fail(
        self,
        task_id: str,
        worker_id: str | None,
        error_message: str,
        *,
        retryable: bool = False,
        retry_delay_seconds: float = 0.0,
    ) -> TaskStatus:
        """retryable and attempts left -> Queued again (Reigh has no back-off field: it is claimable at once);
        otherwise Failed, which Reigh cascades to the orchestrator and its other children."""
        self._forget(task_id)
        message = clean_message(error_message)
        attempt = self._failures.get(task_id, 0) + 1
        if retryable and attempt < DEFAULT_MAX_ATTEMPTS:
            self._failures[task_id] = attempt
            body = {"status": "Queued", "clear_worker": True, "attempts": attempt, "error_details": message}
            self._status_update(task_id, body, "requeue")
            return TaskStatus.QUEUED
        self._failures.pop(task_id, None)
        final = f"{message} (gave up after {attempt} attempts)" if retryable else message
        self._status_update(task_id, {"status": "Failed", "attempts": attempt, "error_details": final}, "fail")
        return TaskStatus.FAILED

    def release(self, task_id: str, worker_id: str) -> None:
        self._forget(task_id)
        self._status_update(task_id, {"status": "Queued", "clear_worker": True}, "release")

    def await_children(self, task_id: str, worker_id: str, message: str) -> None:
        """The orchestrator stays In Progress (Reigh refuses a progress update on it); if a re-run finds every child
        already Complete, it completes now with the final child's output."""
        self._forget(task_id)
        children = self.children(task_id)
        if not children or any(child.status is not TaskStatus.COMPLETE for child in children):
            return
        final = next((child for child in children if child.completes_parent), children[-1])
        path = self._storage_path_of(final.output_location or "")
        if path is not None:
            self._complete_orchestrator(task_id, path, None)

    # ------------------------------------------------------------------------------------------ enqueue

    def enqueue(
        self,
        task_type: str,
        params: dict[str, Any],
        *,
        task_id: str | None = None,
        dependant_on: str | None = None,
        depends_on: Sequence[str] = (),
        project_id: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
    ) -> str:
        if not project_id:
            raise ValueError("project_id: Reigh's create-task needs the project the task belongs to")
        dependencies = list(dict.fromkeys(item for item in [dependant_on, *depends_on] if item))
        return self._create(task_type, params, project_id, task_id or str(uuid.uuid4()), dependencies, None)

    def _create(
        self,
        task_type: str,
        params: dict[str, Any],
        project_id: str,
        task_id: str,
        dependencies: list[str],
        idempotency_key: str | None,
    ) -> str:
        payload = {key: value for key, value in params.items() if key not in ("task_id", "dependant_on")}
        payload["task_id"] = task_id
        if dependencies:
            payload["dependant_on"] = dependencies  # the passthrough resolver reads an array only
        body: dict[str, Any] = {"family": task_type, "project_id": project_id, "input": payload}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        # The body the upstream worker sent (upstream_worker_spec 1.12), which Reigh's current create-task ignores:
        # a deployment still on that version reads these instead.
        body.update(task_id=task_id, task_type=task_type, params=payload, dependant_on=dependencies or None)
        answer = self._invoke("create-task", body) or {}
        return str(answer.get("task_id") or task_id)

    def enqueue_children(self, parent_id: str, children: Sequence[ChildSpec]) -> list[str]:
        """Each child through create-task (the worker passthrough), keyed by (parent, role, index) twice over: the
        existing children are looked up first, and the idempotency key makes a repeated call return the same row."""
        with self._lock:
            parent = self._claimed.get(parent_id)
        project_id = parent.project_id if parent else None
        if not project_id:
            raise QueueError(f"enqueue_children: the project of {parent_id} is unknown (only a claimed task has one)")
        existing = {child_key(child.role or "", child.segment_index): child.id for child in self.children(parent_id)}
        known = dict(existing)
        ids: list[str] = []
        for index, spec in enumerate(children):
            if spec.key in existing:
                ids.append(existing[spec.key])
                continue
            dependencies = []
            for ref in spec.depends_on:
                if ref not in known:
                    raise TaskNotFound(ref, f"children[{index}].depends_on (not a sibling given earlier)")
                dependencies.append(known[ref])
            params = {
                **spec.params,
                "orchestrator_task_id_ref": parent_id,  # Reigh finds children, cascades and completes through it
                CHILD_KEY: {
                    "role": spec.role,
                    "segment_index": spec.segment_index,
                    "completes_parent": spec.completes_parent,
                },
            }
            child_id = self._create(
                spec.task_type, params, project_id, str(uuid.uuid4()), dependencies, f"{parent_id}:{spec.key}"
            )
            known[spec.key] = child_id
            ids.append(child_id)
        return ids

    # ------------------------------------------------------------------------------------------ workers

    def _heartbeat(self, worker_id: str, status: str, current_task_id: str | None) -> None:
        with self._lock:
            logs, self._pending_logs = self._pending_logs, []
        params: dict[str, Any] = {
            "worker_id_param": worker_id,
            "logs_param": logs,
            "current_task_id_param": current_task_id,
            # Reigh's workers.status allows active | inactive | terminated
            "status_param": "inactive" if status in ("stopped", "error") else "active",
        }
        if self._heartbeats_refused:
            return
        try:
            self._client.rpc("func_worker_heartbeat_with_logs", params).execute()
        except APIError as error:
            self._heartbeats_refused = True
            logger.warning(
                "Reigh refused the worker heartbeat ({}): it takes the service-role key; running without heartbeats",
                self._scrub(str(error.message or error))[:200],
            )
        except (httpx.HTTPError, ValueError) as error:  # unreachable, or an answer that is not PostgREST's JSON
            logger.warning("worker heartbeat failed: {}", type(error).__name__)

    def register_worker(
        self, worker_id: str, *, session_id: str, metadata: dict[str, Any], stale_seconds: float
    ) -> None:
        """The heartbeat creates Reigh's workers row (instance_type 'external'), which the claim's worker_id needs."""
        self._heartbeat(worker_id, "starting", None)

    def beat_worker(
        self, worker_id: str, *, session_id: str, status: str, current_task_id: str | None, metadata: dict[str, Any]
    ) -> bool:
        self._heartbeat(worker_id, status, current_task_id)
        model = metadata.get("current_model")
        if isinstance(model, str) and model != self._reported_model and not self._model_reports_refused:
            self._report_model(worker_id, model)
        return True

    def _report_model(self, worker_id: str, model: str) -> None:
        """update-worker-model: Reigh's claim prefers tasks for the model this worker has loaded."""
        try:
            # `model` is the upstream worker's name for the field; Reigh's current function reads `current_model`.
            self._invoke("update-worker-model", {"worker_id": worker_id, "current_model": model, "model": model})
            self._reported_model = model
        except (QueueRefused, EdgeCallFailed) as error:  # it takes the service-role key
            self._model_reports_refused = True
            logger.warning("Reigh refused update-worker-model ({}); the loaded model goes unreported", error)

    # ------------------------------------------------------------------------------------------ not for workers

    def _not_here(self, what: str) -> QueueError:
        return QueueError(f"{what} is not part of Reigh's edge API for workers: use the Reigh app, or --db URL")

    def resolve_id(self, text: str) -> str:
        return text  # no look-up by prefix through the edge API: ids are given whole

    def list_tasks(self, *, status: Any = None, task_type: str | None = None, limit: int = 200) -> list[TaskRecord]:
        raise self._not_here("listing tasks")

    def cancel(self, task_id: str, reason: str = "cancelled by admin") -> list[str]:
        raise self._not_here("cancelling")

    def retry(self, task_id: str) -> list[str]:
        raise self._not_here("retrying")

    def stats(self) -> dict[str, Any]:
        raise self._not_here("queue statistics")

    def list_workers(self) -> list[WorkerRecord]:
        raise self._not_here("listing workers")

    def close(self) -> None:
        for part in (self._client.functions, self._client.postgrest):
            session = getattr(part, "_client", None) or getattr(part, "session", None)
            if isinstance(session, httpx.Client):
                session.close()


def _content_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"
