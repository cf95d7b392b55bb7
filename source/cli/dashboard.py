"""`python -m source.cli dashboard`: the web dashboard over a queue (source/dashboard), served by uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from source.cli.admin import CommandError, opened_queue
from source.queue import QueueError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "dashboard",
        help="a web dashboard: the queue, runs as trees with live progress, the videos, the workers",
        description="Serves the dashboard until interrupted. Read-only unless an admin token is given; binds to "
        "127.0.0.1 unless told otherwise.",
    )
    parser.add_argument(
        "--db", metavar="URL", help="the queue (default: $HW_DB_URL, $DATABASE_URL, sqlite:///tasks.db)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="the worker's output folder, whose videos the pages play (default: $HW_OUTPUT_DIR, else ./outputs)",
    )
    parser.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="allow cancel and retry to requests that carry it as a bearer token [env HW_DASHBOARD_TOKEN; default: "
        "read-only]",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn  # only this command serves HTTP

    from source.dashboard.app import create_app

    output_dir = Path(args.output_dir or os.environ.get("HW_OUTPUT_DIR") or "outputs").expanduser().resolve()
    token = args.admin_token or os.environ.get("HW_DASHBOARD_TOKEN") or None
    try:
        # The pages' requests run in parallel in uvicorn's thread pool: a few connections, not one.
        with opened_queue(args.db, create=False, pool_size=4) as queue:
            mode = "admin" if token else "read-only"
            print(f"dashboard on http://{args.host}:{args.port}/ over {queue.redacted_url} ({mode})")
            app = create_app(queue, output_dir=output_dir, admin_token=token)
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except (CommandError, QueueError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
