"""`python -m source.cli plan FILE [--model NAME] [--json] [--explain]`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from loguru import logger

from source.cli import plan as plan_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "source" / "examples"
H = "https://huggingface.co/org/repo/resolve/main/high.safetensors"
L = "https://huggingface.co/org/repo/resolve/main/low.safetensors"
S = "https://example.com/style.safetensors"


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """loguru as `python -m source.cli` sets it up (WARNING and worse to stderr), for tests that read stderr whole.

    The libraries log DEBUG lines (catalog loading) that the CLI does not show; loguru's default sink holds the stderr
    of the moment it was imported, which a second in-process pytest run (mutmut's) has closed, so its error report
    would land in the captured stderr. Listed before capsys, so the default sink comes back after capsys is gone."""
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message), level="WARNING", format="{level}: {message}")
    yield
    logger.remove()
    logger.add(sys.stderr)  # loguru's default: DEBUG and worse to the stderr of now


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # The dispatcher also imports the admin commands (another helper's file); without it, run the plan module alone.
    if (ROOT / "source" / "cli" / "admin.py").exists():
        command = [sys.executable, "-m", "source.cli", "plan", *args]
    else:
        command = [sys.executable, "-m", "source.cli.plan", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)


def write(tmp_path: Path, data, name: str = "payload.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def plan_json(capsys, path: Path, *extra: str) -> dict:
    assert plan_cli.main([str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def config(steps, solver="euler", shift=5.0, **extra) -> dict:
    guidance = [3.0, 1.0, 1.0]
    phases = []
    for k, count in enumerate(steps):
        loras = [{"url": H if k < len(steps) - 1 else L, "multiplier": 1.0}]
        if k == 0:
            loras.append({"url": S, "multiplier": ",".join(str(0.9 - 0.1 * i) for i in range(count))})
        phases.append({"phase": k + 1, "guidance_scale": guidance[k], "loras": loras})
    return {
        "num_phases": len(steps),
        "steps_per_phase": steps,
        "flow_shift": shift,
        "sample_solver": solver,
        "phases": phases,
        **extra,
    }


def reference_timesteps(solver: str, n: int, shift: float) -> np.ndarray:
    if solver == "euler":
        u = np.linspace(1000, 1, n, dtype=np.float32).astype(np.float64) / 1000
        return 1000 * shift * u / (1 + (shift - 1) * u)
    if solver in ("unipc", ""):
        sigma = np.linspace(0.999, 0.0, n + 1, dtype=np.float32)[:-1].astype(np.float64)
    else:
        sigma = np.linspace(1.0, 0.0, n + 1, dtype=np.float32)[:n].astype(np.float64)
    return 1000 * (shift * sigma / (1 + (shift - 1) * sigma))


@pytest.mark.parametrize("solver", ["euler", "unipc", "", "dpm++", "dpm++_sde"])
@pytest.mark.parametrize("steps", [[3, 3], [2, 2, 2], [1, 4, 3], [4, 2]])
def test_json_matches_the_contract_step_by_step(tmp_path, capsys, solver, steps):
    out = plan_json(capsys, write(tmp_path, config(steps, solver, shift=3.0)))
    n = sum(steps)
    t = reference_timesteps(solver, n, 3.0)
    assert out["num_inference_steps"] == n and out["guidance_phases"] == len(steps)
    assert out["sample_solver"] == (solver or "unipc") and out["flow_shift"] == 3.0
    assert out["timesteps"] == t.tolist()
    assert out["switch_threshold"] == (t[steps[0] - 1] + t[steps[0]]) / 2
    if len(steps) == 3:
        b = steps[0] + steps[1]
        assert out["switch_threshold2"] == (t[b - 1] + t[b]) / 2
    else:
        assert out["switch_threshold2"] is None
    switch_phase = 1 if len(steps) == 2 else 2
    assert out["model_switch_phase"] == switch_phase
    assert out["lora_names"] == [H, S, L]
    phases = [k + 1 for k, count in enumerate(steps) for _ in range(count)]
    style = [0.9 - 0.1 * i for i in range(steps[0])]
    for i, step in enumerate(out["steps"]):
        phase = phases[i]
        assert step["index"] == i and step["timestep"] == t[i] and step["phase"] == phase
        assert step["guidance"] == [3.0, 1.0, 1.0][phase - 1]
        assert step["expert"] == ("low" if phase > switch_phase else "high")
        high = 1.0 if phase < len(steps) else 0.0
        low = 1.0 if phase == len(steps) else 0.0
        assert step["lora_multipliers"] == pytest.approx([high, style[i] if phase == 1 else 0.0, low])
    assert out["warnings"] == []


def test_seed_001_three_phase_nested_under_orchestrator_details_subprocess(tmp_path):
    payload = {
        "orchestrator_details": {
            "model_name": "wan_2_2_vace_lightning_baseline_2_2_2",
            "openai_api_key": "sk-must-not-leak",
            "phase_config": json.loads((EXAMPLES / "phase_config_3phase.json").read_text()),
        }
    }
    result = run_cli(str(write(tmp_path, payload)), "--json", "--explain")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model"] == "wan_2_2_vace_lightning_baseline_2_2_2"
    assert out["lora_multipliers"] == ["0.75;1.0;0", "0;0;1.0"]
    assert (out["switch_threshold"], out["switch_threshold2"]) == (917.4817575573454, 663.2310443522647)
    assert [f"{t:.1f}" for t in out["timesteps"]] == ["1000.0", "952.4", "882.5", "769.7", "556.8", "5.0"]
    assert [s["lora_multipliers"][0] for s in out["steps"]] == [0.75, 0.75, 1, 1, 0, 0]
    assert [s["expert"] for s in out["steps"]] == ["high"] * 4 + ["low"] * 2
    assert out["sources"]["guidance_scale"]["source"] == "orchestrator_details.phase_config"
    assert "sk-must-not-leak" not in result.stdout


def test_malformed_config_exits_2_naming_the_field_subprocess(tmp_path):
    bad = config([3, 3])
    bad["phases"][0]["loras"][1]["multiplier"] = "0.9,0.8"  # 2 values for a 3-step phase
    result = run_cli(str(write(tmp_path, {"orchestrator_details": {"phase_config": bad}})), "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "orchestrator_details.phase_config.phases[0].loras[1].multiplier" in lines[0]


def test_table_output_subprocess():
    result = run_cli(str(EXAMPLES / "phase_config_2phase.json"), "--model", "wan_2_2_i2v_lightning_baseline_2_2_2")
    assert result.returncode == 0, result.stderr
    assert "wan_2_2_i2v_lightning_baseline_2_2_2" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("│") and ("high" in line or "low" in line)]
    assert len(rows) == 6
    assert [("low" in row) for row in rows] == [False] * 3 + [True] * 3


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"num_phases": 4, "steps_per_phase": [1, 1, 1, 1], "phases": [{}, {}, {}, {}]}, "phase_config.num_phases"),
        ({"steps_per_phase": [3, 0], "phases": [{}, {}]}, "phase_config.steps_per_phase[1]"),
        ({"steps_per_phase": [3, -2], "phases": [{}, {}]}, "phase_config.steps_per_phase[1]"),
        ({"steps_per_phase": [3, 3], "phases": [{}, {}], "sample_solver": "causvid"}, "phase_config.sample_solver"),
        ({"steps_per_phase": [3, 3], "phases": [{"guidance_scale": "x"}, {}]}, "phase_config.phases[0].guidance_scale"),
        (
            {"phase_config": {"steps_per_phase": [3, 3], "phases": [{}, {"loras": [{"url": H, "multiplier": "a"}]}]}},
            "phase_config.phases[1].loras[0].multiplier",
        ),
        (
            {"orchestrator_details": {"phase_config": {"steps_per_phase": [2, 2, 2], "phases": [{}, {}]}}},
            "orchestrator_details.phase_config.steps_per_phase",
        ),
        ({"orchestrator_details": {"sample_solver": "lcm"}}, "orchestrator_details.sample_solver"),
        ({"num_inference_steps": "many"}, "num_inference_steps"),
        (
            {"individual_segment_params": {"phase_config": {"steps_per_phase": [3, 3], "phases": [{}]}}},
            "individual_segment_params.phase_config.steps_per_phase",
        ),
        ([1, 2, 3], "params"),
    ],
)
def test_malformed_inputs_exit_2(cli_logging, tmp_path, capsys, payload, field):
    assert plan_cli.main([str(write(tmp_path, payload)), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert f"{field}: expected" in captured.err


def test_unreadable_files_and_unknown_models_exit_2(tmp_path, capsys):
    assert plan_cli.main([str(write(tmp_path, "{not json")), "--json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert plan_cli.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert plan_cli.main([str(write(tmp_path, config([3, 3]))), "--model", "nope"]) == 2
    assert "--model" in capsys.readouterr().err


def test_phase_config_at_top_level_of_task_params(tmp_path, capsys):
    out = plan_json(capsys, write(tmp_path, {"prompt": "x", "phase_config": config([3, 3])}))
    assert out["switch_threshold"] == 826.1000160879601
    assert [s["expert"] for s in out["steps"]] == ["high"] * 3 + ["low"] * 3


def test_null_lora_lists_and_auto_corrected_num_phases(tmp_path, capsys):
    data = config([2, 2, 2])
    data["num_phases"] = 2
    data["phases"][1]["loras"] = None
    out = plan_json(capsys, write(tmp_path, data))
    assert out["guidance_phases"] == 3
    assert len(out["warnings"]) == 1 and "num_phases" in out["warnings"][0]
    assert out["lora_multipliers"] == ["1.0;0;0", "0.9,0.8;0;0", "0;0;1.0"]


def test_plain_wgp_params_use_model_defaults(tmp_path, capsys):
    out = plan_json(capsys, write(tmp_path, {"model": "wan_2_2_i2v_lightning_baseline_2_2_2", "guidance_scale": 2}))
    assert out["model"] == "wan_2_2_i2v_lightning_baseline_2_2_2"
    assert out["switch_threshold"] == 558 and out["guidance_scales"] == [2.0, 1.0, 1.0]
    assert [s["phase"] for s in out["steps"]] == [1, 1, 1, 1, 2, 2]  # the baseline's 4+2 split
    bare = plan_json(capsys, write(tmp_path, {"prompt": "no model"}))
    assert bare["model"] is None and bare["num_inference_steps"] == 30 and bare["sample_solver"] == "unipc"


def test_model_flag_fills_what_the_payload_leaves_out(tmp_path, capsys):
    out = plan_json(capsys, write(tmp_path, {"guidance_scale": 5}), "--model", "t2v_2_2")
    assert out["num_inference_steps"] == 30 and out["sample_solver"] == "unipc" and out["flow_shift"] == 12
    assert out["guidance_scales"][0] == 5.0
    assert out["steps"][19]["expert"] == "low" and out["steps"][18]["expert"] == "high"


def test_task_row_and_legacy_model_name(tmp_path, capsys):
    row = {
        "task_type": "travel_orchestrator",
        "params": {"orchestrator_details": {"model_name": "lightning_baseline_2_2_2"}},
    }
    out = plan_json(capsys, write(tmp_path, row))
    assert out["model"] == "wan_2_2_vace_lightning_baseline_2_2_2"
    assert any("legacy name" in w for w in out["warnings"])
    unknown = plan_json(capsys, write(tmp_path, {"model": "mystery"}))
    assert unknown["model"] is None and any("not in the catalog" in w for w in unknown["warnings"])


def test_explain_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that no source is folded over two lines
    path = write(tmp_path, {"orchestrator_details": {"phase_config": config([3, 3]), "seed_base": 5}})
    assert plan_cli.main([str(path), "--explain"]) == 0
    text = capsys.readouterr().out
    assert "orchestrator_details.phase_config" in text and "orchestrator_details.seed_base" in text


def test_model_built_in_loras_are_part_of_the_plan(tmp_path, capsys):
    out = plan_json(capsys, write(tmp_path, {"activated_loras": ["mine.safetensors"]}), "--model", "optimised-t2i")
    assert len(out["lora_names"]) == 5 and out["lora_names"][-1] == "mine.safetensors"
    assert out["lora_multipliers"] == ["1.0", "0.2", "0.5", "0.5", "1.0"]
    assert out["steps"][0]["lora_multipliers"] == [1.0, 0.2, 0.5, 0.5, 1.0]


def _per_pair_payload() -> dict:
    """A Reigh advanced-mode travel payload's orchestrator_details: a run phase_config and per-pair overrides."""
    return {
        "orchestrator_details": {
            "model_name": "wan_2_2_i2v_lightning_baseline_2_2_2",
            "segment_frames_expanded": [61, 61, 61],
            "frame_overlap_expanded": [10, 10, 10],
            "phase_config": config([3, 3], model_switch_phase=1),
            "phase_configs_expanded": [None, config([2, 4], shift=3.0, model_switch_phase=1), None],
            "loras_per_segment_expanded": [None, None, [{"path": "https://x/style.safetensors", "strength": 0.6}]],
        }
    }


def test_explain_per_segment_names_the_pair_override_each_value_came_from(tmp_path, capsys):
    path = write(tmp_path, _per_pair_payload())
    out = plan_json(capsys, path, "--explain")
    segments = out["segments"]
    assert [s["segment"] for s in segments] == [0, 1, 2]
    assert [s["num_inference_steps"] for s in segments] == [6, 6, 6]
    assert [s["flow_shift"] for s in segments] == [5.0, 3.0, 5.0]
    assert segments[0]["sources"]["flow_shift"]["source"] == "orchestrator_details.phase_config"
    assert segments[1]["sources"]["flow_shift"]["source"] == "orchestrator_details.phase_configs_expanded[1]"
    assert segments[2]["lora_names"][-1] == "https://x/style.safetensors"
    assert segments[2]["sources"]["activated_loras"]["source"] == (
        "orchestrator_details.phase_config + orchestrator_details.loras_per_segment_expanded[2]"
    )
    single = plan_json(capsys, path, "--explain", "--segment", "1")
    assert single["segment"] == 1 and single["sources"]["flow_shift"]["value"] == 3.0


def test_a_bad_pair_phase_config_is_named_with_its_index(tmp_path, capsys):
    payload = _per_pair_payload()
    payload["orchestrator_details"]["phase_configs_expanded"][1]["steps_per_phase"] = []
    assert plan_cli.main([str(write(tmp_path, payload))]) == 2
    assert "orchestrator_details.phase_configs_expanded[1].steps_per_phase" in capsys.readouterr().err
