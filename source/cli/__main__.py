"""Entry point of `python -m source.cli`."""

from __future__ import annotations

import argparse
import sys

from loguru import logger

from source.cli import admin, compare, dashboard, models, plan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m source.cli", description="Headless-Wan2GP admin commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan.register(commands)
    admin.register(commands)
    dashboard.register(commands)
    models.register(commands)
    compare.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stdout is for results; the libraries' info lines (migrations, cascades, catalog loading) would only be noise
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
