"""`python -m source.cli models [--json]` lists the model catalog; `models show NAME [--json]` shows one model: its
architecture, where its weights come from and why, whether they are on this machine, and every setting with where
its value comes from and what this engine does with it. No torch is imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from source.cli.catalog_args import catalog_from, catalog_options
from Wan2GP.catalog import CatalogError, ModelDefinition
from Wan2GP.model_folders import default_cache_dir, tiny_model_folder
from Wan2GP.request import ACCEPTED_PARAMS, SYSTEM_DEFAULTS, setting_status

EXIT_FAILED = 1
_NOT_SETTINGS = {"model", "prompt", "image_start", "image_end", "video_guide", "video_mask", "image_refs"}
_NOT_SETTINGS |= {"activated_loras", "output_dir", "output_filename"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="the engine's cache (tiny models are built there) [default: $WAN2GP_CACHE or ~/.cache/wan2gp]",
    )
    models = subparsers.add_parser(
        "models",
        parents=[catalog_options(), common],
        help="list the model catalog (architecture, experts, weights, cached here?)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.set_defaults(func=_list)
    actions = models.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser(
        "show", parents=[catalog_options(), common], help="one model: weights, settings and their provenance"
    )
    show.add_argument("name", metavar="NAME", help="a model id of the catalog")
    show.set_defaults(func=_show)


# ------------------------------------------------------------------------------------------------------ the commands


def _list(args: argparse.Namespace) -> int:
    try:
        catalog = catalog_from(args)
    except CatalogError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    cache = _Cache(args.cache_dir or default_cache_dir())
    rows = [model_summary(catalog.get(model_id), cache) for model_id in catalog.ids()]
    if args.json:
        print(json.dumps({"models": rows, "set_aside": catalog.set_aside}, indent=2))
        return 0
    table = Table(title=f"{len(rows)} models", title_justify="left")
    for column in ("id", "architecture", "experts", "size", "weights", "cached here"):
        table.add_column(column, overflow="fold")
    for row in rows:
        cached = _bytes(row["cached_bytes"]) if row["cached"] else "no"
        table.add_row(row["id"], row["architecture"], str(row["experts"]), row["size"], row["weights"], cached)
    console = _console()
    console.print(table)
    if catalog.set_aside:
        console.print(f"{len(catalog.set_aside)} definition(s) set aside: {', '.join(sorted(catalog.set_aside))}")
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        catalog = catalog_from(args)
        definition = catalog.get(args.name, warn=False)
    except CatalogError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    details = model_details(definition, _Cache(args.cache_dir or default_cache_dir()))
    if args.json:
        print(json.dumps(details, indent=2, default=str))
        return 0
    console = _console()
    console.print(f"[bold]{definition.id}[/bold]: {definition.name}")
    if definition.description:
        console.print(definition.description)
    for key in ("architecture", "kind", "size", "experts", "fps", "clip_image_encoder", "latent_channels"):
        console.print(f"  {key}: {details[key]}")
    console.print(f"  weights: {details['weights']}  ({details['weights_origin']})")
    cached = _bytes(details["cached_bytes"]) if details["cached"] else "no"
    console.print(f"  cached here: {cached}")
    console.print(f"  definition files: {', '.join(details['definition_files'])}")
    for lora in details["loras"]:
        console.print(f"  built-in LoRA: {lora['source']} (multiplier {lora['multiplier']})")
    table = Table(title="settings", title_justify="left")
    for column in ("setting", "value", "from", "this engine"):
        table.add_column(column, overflow="fold")
    for setting in details["settings"]:
        table.add_row(setting["name"], json.dumps(setting["value"]), setting["from"], setting["status"])
    console.print(table)
    return 0


# ------------------------------------------------------------------------------------------------ what is shown


def model_summary(definition: ModelDefinition, cache: _Cache) -> dict[str, Any]:
    cached_bytes = cache.bytes_of(definition)
    return {
        "id": definition.id,
        "architecture": definition.architecture,
        "experts": definition.experts,
        "size": definition.spec.size,
        "weights": definition.weights.describe(),
        "cached": cached_bytes is not None,
        "cached_bytes": cached_bytes or 0,
    }


def model_details(definition: ModelDefinition, cache: _Cache) -> dict[str, Any]:
    spec = definition.spec
    files = sorted({str(path) for path in definition.setting_files.values()} | {str(definition.source_file)})
    return {
        **model_summary(definition, cache),
        "name": definition.name,
        "kind": spec.kind,
        "fps": definition.fps,
        "clip_image_encoder": spec.clip_image_encoder,
        "latent_channels": spec.latent_channels,
        "weights_origin": definition.weights_origin,
        "checkpoints": list(definition.weights.checkpoints or ()),
        "definition_files": files,
        "travel_counterparts": definition.travel_counterparts,
        "loras": [
            {"source": source, "multiplier": multiplier}
            for source, multiplier in zip(
                definition.loras,
                [*definition.loras_multipliers, *["1.0"] * (len(definition.loras) - len(definition.loras_multipliers))],
                strict=True,
            )
        ],
        "unused_model_keys": sorted(definition.options),
        "settings": settings_with_provenance(definition),
    }


def settings_with_provenance(definition: ModelDefinition) -> list[dict[str, Any]]:
    """Every generation setting a request starts from for this model (the definition's value, else the engine's
    default), then the definition's settings this engine does not use, each with its file and status."""
    defaults: Mapping[str, Any] = {**SYSTEM_DEFAULTS, "guidance_phases": definition.default_guidance_phases}
    rows = []
    for name in ACCEPTED_PARAMS:
        if name in _NOT_SETTINGS:
            continue
        if name in definition.settings:
            source = str(definition.setting_files.get(name, definition.source_file))
            rows.append({"name": name, "value": definition.settings[name], "from": source, "status": "used"})
        elif name in defaults:
            value = defaults[name]
            value = list(value) if isinstance(value, tuple) else value
            rows.append({"name": name, "value": value, "from": "engine default", "status": "used"})
    for name, value in sorted(definition.settings.items()):
        if name not in ACCEPTED_PARAMS:
            source = str(definition.setting_files.get(name, definition.source_file))
            rows.append({"name": name, "value": value, "from": source, "status": setting_status(name)})
    return rows


class _Cache:
    """What of a model's weights is on this machine: the Hugging Face cache (HF_HOME) for repos and checkpoint
    files, the engine's cache for tiny models, the folder itself for local ones."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self._hub: dict[str, int] | None = None

    def bytes_of(self, definition: ModelDefinition) -> int | None:
        """Bytes on disk of what this model loads, None when none of it is here."""
        weights = definition.weights
        if weights.kind == "tiny":
            return _folder_bytes(tiny_model_folder(self.cache_dir, definition.id))
        if weights.kind == "local":
            folder = weights.local_dir
            if folder is not None and not folder.is_absolute():
                folder = self.cache_dir / folder
            return _folder_bytes(folder) if folder is not None else None
        repos = [weights.repo_id, *(_checkpoint_repo(url) for url in weights.checkpoints or ())]
        sizes = [self.hub_sizes().get(repo) for repo in repos if repo]
        return sum(sizes) if sizes and all(size is not None for size in sizes) else None  # type: ignore[misc]

    def hub_sizes(self) -> dict[str, int]:
        if self._hub is None:
            from huggingface_hub import constants, scan_cache_dir
            from huggingface_hub.errors import CacheNotFound

            try:
                info = scan_cache_dir(constants.HF_HUB_CACHE)  # HF_HOME / HF_HUB_CACHE as the client reads them
            except (CacheNotFound, OSError):
                self._hub = {}
            else:
                self._hub = {repo.repo_id: repo.size_on_disk for repo in info.repos if repo.repo_type == "model"}
        return self._hub


def _checkpoint_repo(url: str) -> str | None:
    from Wan2GP.architectures import hub_file

    found = hub_file(url)
    return found[0] if found else None


def _folder_bytes(folder: Path) -> int | None:
    if not folder.is_dir():
        return None
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _console() -> Console:
    # piped output (logs, CI) gets a wide fixed width instead of rich's 80 columns
    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)
