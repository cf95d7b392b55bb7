"""The dashboard's web app (Starlette): server-rendered pages that poll a small JSON API for live progress.

Pages: `/` the queue (status counts, a filterable task list with progress bars and ETA, per-model throughput over the
last hour), `/tasks/{id}` one task (redacted params, its run tree, the error in full, the output video and thumbnail,
a travel run's frame contract), `/workers`. JSON under `/api/...` for the same. Cancel and retry (`POST
/api/tasks/{id}/cancel|retry`) take `Authorization: Bearer <admin token>` and follow the queue's cascade rules, as the
CLI does; without a token configured the dashboard is read-only. `/files/...` serves files from inside the output
folder only. Everything, scripts and styles included, is served from here: no CDN.

The queue calls block (psycopg, sqlite3), so every endpoint is a plain function Starlette runs in its thread pool.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from source.dashboard.views import task_detail, task_summary, throughput, worker_summary
from source.queue import QueueError, TaskNotFound, TaskQueue, TaskStateError, TaskStatus
from source.storage.paths import PathOutsideRoot, confine

HERE = Path(__file__).resolve().parent
LIST_LIMIT_MAX = 1000
THROUGHPUT_SAMPLE = 1000  # completed rows read to count the last hour's throughput


def create_app(queue: TaskQueue, *, output_dir: Path, admin_token: str | None = None) -> Starlette:
    """The dashboard over `queue`. `admin_token`: the bearer token cancel/retry need; None makes it read-only."""
    output_dir = Path(output_dir).resolve()
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def now() -> datetime:
        return datetime.now(UTC)

    def page(name: str) -> Callable[[Request], Response]:
        def render(request: Request) -> Response:
            context = {"read_only": admin_token is None, **request.path_params}
            return templates.TemplateResponse(request, name, context)

        return render

    def api_stats(request: Request) -> Response:
        return JSONResponse(queue.stats())

    def api_tasks(request: Request) -> Response:
        status_text = request.query_params.get("status") or None
        try:
            status = TaskStatus.parse(status_text) if status_text else None
            limit = int(request.query_params.get("limit", "200"))
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        if not 1 <= limit <= LIST_LIMIT_MAX:
            return JSONResponse({"error": f"limit: expected 1..{LIST_LIMIT_MAX}, got {limit}"}, status_code=400)
        task_type = request.query_params.get("task_type") or None
        tasks = queue.list_tasks(status=status, task_type=task_type, limit=limit)
        moment = now()
        return JSONResponse([task_summary(task, now=moment, output_dir=output_dir) for task in tasks])

    def api_task(request: Request) -> Response:
        try:
            task = queue.get(queue.resolve_id(request.path_params["task_id"]))
        except (TaskNotFound, QueueError) as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        return JSONResponse(task_detail(queue, task, now=now(), output_dir=output_dir))

    def api_workers(request: Request) -> Response:
        moment = now()
        return JSONResponse([worker_summary(worker, now=moment) for worker in queue.list_workers()])

    def api_throughput(request: Request) -> Response:
        completed = queue.list_tasks(status=TaskStatus.COMPLETE, limit=THROUGHPUT_SAMPLE)
        return JSONResponse(throughput(completed, now=now()))

    def action(apply: Callable[[str], list[str]]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            refusal = _refusal(request, admin_token)
            if refusal is not None:
                return refusal
            try:
                task_id = queue.resolve_id(request.path_params["task_id"])
                touched = apply(task_id)
            except TaskNotFound as error:
                return JSONResponse({"error": str(error)}, status_code=404)
            except (TaskStateError, ValueError) as error:
                return JSONResponse({"error": str(error)}, status_code=409)
            return JSONResponse({"task_id": task_id, "touched": touched})

        return endpoint

    def files(request: Request) -> Response:
        try:
            wanted = confine(output_dir, request.path_params["path"])
        except PathOutsideRoot:
            return JSONResponse({"error": "outside the output folder"}, status_code=403)
        if not wanted.is_file():
            return JSONResponse({"error": "no such file"}, status_code=404)
        return FileResponse(wanted)

    routes = [
        Route("/", page("queue.html")),
        Route("/tasks/{task_id}", page("task.html")),
        Route("/workers", page("workers.html")),
        Route("/api/stats", api_stats),
        Route("/api/tasks", api_tasks),
        Route("/api/tasks/{task_id}", api_task),
        Route("/api/workers", api_workers),
        Route("/api/throughput", api_throughput),
        Route(
            "/api/tasks/{task_id}/cancel",
            action(lambda task_id: queue.cancel(task_id, "cancelled from the dashboard")),
            methods=["POST"],
        ),
        Route("/api/tasks/{task_id}/retry", action(queue.retry), methods=["POST"]),
        Route("/files/{path:path}", files),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes)


def _refusal(request: Request, admin_token: str | None) -> Response | None:
    """None when the request carries the admin token; else the answer that refuses it."""
    if admin_token is None:
        return JSONResponse(
            {"error": "read-only dashboard: start it with --admin-token to cancel or retry"}, status_code=403
        )
    given = request.headers.get("authorization", "")
    if not given.startswith("Bearer ") or not secrets.compare_digest(given.removeprefix("Bearer "), admin_token):
        return JSONResponse(
            {"error": "cancel and retry need the admin token (Authorization: Bearer ...)"}, status_code=401
        )
    return None
