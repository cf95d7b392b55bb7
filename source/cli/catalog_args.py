"""`--defaults-dir DIR`: the model definition folders a CLI command loads over the bundled catalog, as the worker's
flag of the same name does (same environment variable)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from Wan2GP.catalog import Catalog, load_catalog

DEFAULTS_DIRS_ENV = "HW_DEFAULTS_DIRS"


def catalog_options() -> argparse.ArgumentParser:
    """A parent parser holding --defaults-dir (plan's older --catalog-dir spelling is kept as an alias)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--defaults-dir",
        "--catalog-dir",
        dest="defaults_dirs",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of model definition files (upstream Wan2GP's defaults/*.json as they are) over the bundled "
        f"ones (repeat for more) [env {DEFAULTS_DIRS_ENV}, separated by ':']",
    )
    return options


def catalog_from(args: argparse.Namespace) -> Catalog:
    """The catalog the command's --defaults-dir (else the environment) names; CatalogError on a bad file."""
    folders = list(args.defaults_dirs)
    if not folders:
        folders = [Path(part) for part in os.environ.get(DEFAULTS_DIRS_ENV, "").split(os.pathsep) if part.strip()]
    return load_catalog(extra_dirs=folders)
