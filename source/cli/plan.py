"""`python -m source.cli plan FILE [--model NAME] [--json] [--explain]`: what a payload will do, step by step,
before any GPU time is spent. No torch is imported.

FILE holds a bare phase_config, task params (with phase_config at the top level, under orchestrator_details or
under individual_segment_params), plain WGP params (the model's defaults fill the rest), or a whole task row
({"task_type", "params"}). Invalid input exits with status 2 and one line on stderr naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from source.cli.catalog_args import catalog_from, catalog_options
from source.params.errors import PayloadError, parse_model
from source.params.payloads import GenerationOverrides
from source.params.redact import redact
from source.params.resolve import Resolved, levels_of, plan_from_resolved, resolve_generation
from Wan2GP.catalog import Catalog, CatalogError, ModelDefinition, load_catalog
from Wan2GP.schedule import GenerationPlan

EXIT_INVALID = 2
PER_PAIR_KEYS = ("phase_configs_expanded", "loras_per_segment_expanded")
_PHASE_CONFIG_KEYS = frozenset({"phases", "steps_per_phase", "num_phases"})


class PlanInputError(ValueError):
    """Input the plan command cannot use (the message names the field or the file)."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan",
        parents=[catalog_options()],
        help="explain the per-step plan of a payload (timesteps, phases, expert, guidance, LoRA strengths)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="JSON: phase_config, task params or a task row")
    parser.add_argument("--model", metavar="NAME", help="catalog model whose defaults fill what the payload omits")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--explain", action="store_true", help="show where every resolved value came from")
    parser.add_argument(
        "--segment",
        type=int,
        metavar="N",
        help="a travel payload's segment N, with that pair's overrides (phase_configs_expanded[N], "
        "loras_per_segment_expanded[N]); without it a payload with per-pair overrides is explained segment by segment",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        data = read_json(args.file)
        catalog = catalog_from(args)
        segments = [args.segment] if args.segment is not None else per_pair_segments(data)
        if not segments:
            explained = explain_payload(data, model=args.model, catalog=catalog)
        else:
            by_segment = [explain_payload(data, model=args.model, catalog=catalog, segment=i) for i in segments]
    except (PayloadError, PlanInputError, CatalogError) as error:
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_INVALID
    if not segments:
        if args.json:
            print(json.dumps(explained.to_json_dict(explain=args.explain), indent=2))
        else:
            explained.print_table(explain=args.explain)
        return 0
    if args.json:
        plans = [
            {"segment": i, **plan.to_json_dict(explain=args.explain)}
            for i, plan in zip(segments, by_segment, strict=True)
        ]
        print(json.dumps(plans[0] if args.segment is not None else {"segments": plans}, indent=2))
        return 0
    for index, plan in zip(segments, by_segment, strict=True):
        print(f"segment {index}")
        plan.print_table(explain=args.explain)
    return 0


class ExplainedPlan:
    """A plan together with the resolved parameters it came from."""

    def __init__(self, plan: GenerationPlan, resolved: Resolved, model: ModelDefinition | None) -> None:
        self.plan = plan
        self.resolved = resolved
        self.model = model

    def to_json_dict(self, *, explain: bool = False) -> dict[str, Any]:
        out = {"model": self.model.id if self.model else None, **self.plan.to_json_dict()}
        if explain:
            out["sources"] = {
                name: {"value": redact({name: value})[name], "source": source}
                for name, value, source in self.resolved.rows()
            }
        return out

    def print_table(self, *, explain: bool = False) -> None:
        # rich is imported here so --json stays light.
        from rich.console import Console
        from rich.table import Table

        console = Console()
        plan = self.plan
        thresholds = ", ".join(
            f"{value:.4f}" for value in (plan.switch_threshold, plan.switch_threshold2) if value is not None
        )
        console.print(
            f"[bold]model[/bold] {self.model.id if self.model else '(none: system defaults)'}   "
            f"[bold]solver[/bold] {plan.sample_solver}   [bold]flow_shift[/bold] {plan.flow_shift:g}   "
            f"[bold]steps[/bold] {plan.num_inference_steps}   [bold]guidance_phases[/bold] {plan.guidance_phases}   "
            f"[bold]model_switch_phase[/bold] {plan.model_switch_phase}   "
            f"[bold]thresholds[/bold] {thresholds or '-'}"
        )
        table = Table(show_header=True, header_style="bold")
        for column in ("step", "timestep", "phase", "guidance", "expert"):
            table.add_column(column, justify="right" if column != "expert" else "left")
        for index in range(len(plan.lora_names)):
            table.add_column(f"L{index}\n{plan.lora_multipliers[index]}", justify="right")
        for step in plan.steps:
            table.add_row(
                str(step.index),
                f"{step.timestep:.1f}",
                str(step.phase),
                f"{step.guidance:g}",
                step.expert,
                *(f"{value:g}" for value in step.lora_multipliers),
            )
        console.print(table)
        for index, name in enumerate(plan.lora_names):
            console.print(f"L{index}: {name}", highlight=False, markup=False, soft_wrap=True)
        for warning in plan.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        if explain:
            sources = Table(title="resolved parameters", show_header=True, header_style="bold")
            # At 80 columns a long source must not squeeze the value (a URL) into a few characters: both fold.
            sources.add_column("parameter", no_wrap=True)
            sources.add_column("value", overflow="fold", min_width=24, ratio=3)
            sources.add_column("from", overflow="fold", min_width=16, ratio=2)
            for name, value, source in self.resolved.rows():
                sources.add_row(name, repr(redact({name: value})[name]), source)
            console.print(sources)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PlanInputError(f"{path}: cannot read ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise PlanInputError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None


def per_pair_segments(data: Any) -> list[int]:
    """The segments of a travel payload that has per-pair overrides (all of them), else none."""
    params = _task_params(data) if isinstance(data, dict) else {}
    details = params.get("orchestrator_details")
    if not isinstance(details, dict) or not any(details.get(key) for key in PER_PAIR_KEYS):
        return []
    count = details.get("num_new_segments_to_generate")
    if not isinstance(count, int):
        frames = details.get("segment_frames_expanded")
        count = len(frames) if isinstance(frames, list) else 0
    return list(range(max(min(count, 256), 0)))


def explain_payload(
    data: Any, *, model: str | None = None, catalog: Catalog | None = None, segment: int | None = None
) -> ExplainedPlan:
    """Explain a payload; `segment` picks a travel payload's segment (its pair's overrides on top)."""
    catalog = catalog or load_catalog()
    params = _task_params(data)
    payload = parse_model(GenerationOverrides, params)
    levels = levels_of(payload)
    if segment is not None:
        if payload.orchestrator_details is None:
            raise PlanInputError("--segment: expected a travel payload (with orchestrator_details)")
        levels = dataclasses.replace(levels, pair_index=segment)
    definition, notes = _pick_model(catalog, model, levels.model_name())
    resolved = resolve_generation(levels, definition)
    resolved = Resolved(resolved, [*notes, *resolved.warnings], resolved.model)
    return ExplainedPlan(plan_from_resolved(resolved), resolved, definition)


def _task_params(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PayloadError("params", "a JSON object", data)
    if isinstance(data.get("params"), dict) and "task_type" in data:
        data = data["params"]  # a whole task row
    if _PHASE_CONFIG_KEYS & data.keys() and not {"phase_config", "orchestrator_details"} & data.keys():
        return {"phase_config": data}  # a bare phase_config
    return data


def _pick_model(
    catalog: Catalog, requested: str | None, from_payload: str | None
) -> tuple[ModelDefinition | None, list[str]]:
    notes: list[str] = []
    if requested is not None:
        try:
            return catalog.get(requested, warn=False), notes
        except CatalogError as error:
            raise PlanInputError(f"--model: {error}") from None
    if from_payload is None:
        return None, notes
    if from_payload not in catalog:
        notes.append(f"model {from_payload!r} is not in the catalog: its defaults are not applied")
        return None, notes
    definition = catalog.get(from_payload, warn=False)
    if definition.id != from_payload:
        notes.append(f"model {from_payload!r} is a legacy name of {definition.id!r}")
    return definition, notes


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the plan command alone (`python -m source.cli.plan FILE ...`)."""
    parser = argparse.ArgumentParser(prog="python -m source.cli")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(["plan", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
