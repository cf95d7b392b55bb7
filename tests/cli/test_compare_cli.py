"""`python -m source.cli compare --tiny`: the baseline comparison run on the tiny models, its results.json, its mp4s
(checked with ffprobe) and its contact sheet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image

from source.cli.__main__ import main
from source.media.images import evenly_spaced
from source.media.video import read_frames

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_set_on_tiny_models_as_a_command(tmp_path: Path, model_cache: Path, ffprobe) -> None:
    out = tmp_path / "baseline"
    command = [sys.executable, "-m", "source.cli", "compare", "--tiny", "--output-dir", str(out)]
    command += ["--cache-dir", str(model_cache)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert finished.returncode == 0, finished.stderr[-3000:]

    report = json.loads((out / "results.json").read_text())
    assert report["models"] == ["vace_14B", "vace_14B_fake_cocktail_2_2", "optimised-t2i"]
    assert report["all_ok"] is True and report["tiny"] is True
    runs = {result["model"]: result for result in report["results"]}
    # Each model on the tiny model of its architecture with as many experts: both experts run for the 2-expert ones.
    assert runs["vace_14B"]["ran_as"] == "wan_tiny_vace"
    assert runs["vace_14B_fake_cocktail_2_2"]["ran_as"] == "wan_tiny_vace_2_2"
    assert runs["optimised-t2i"]["ran_as"] == "wan_tiny_t2v_2_2"
    assert runs["vace_14B_fake_cocktail_2_2"]["forward_passes"]["low"] > 0
    for model, result in runs.items():
        assert result["status"] == "ok" and result["error"] is None, result
        assert (result["frames"], result["width"], result["height"]) == (9, 64, 64)
        assert result["seconds"] > 0 and result["peak_memory_bytes"] > 0
        assert Path(result["output"]) == out / f"{model}.mp4"
        stream = ffprobe(result["output"])
        assert (int(stream["nb_read_frames"]), stream["width"], stream["height"]) == (9, 64, 64)

    # The contact sheet: one row per model, in order, each row evenly spaced frames of that model's video.
    sheet = PIL.Image.open(report["contact_sheet"]).convert("RGB")
    assert sheet.height == 3 * 96
    for row, model in enumerate(report["models"]):
        last_tile = evenly_spaced(read_frames(out / f"{model}.mp4"), 6)[-1]
        expected = np.asarray(PIL.Image.fromarray(last_tile).resize((96, 96)), dtype=int)
        shown = np.asarray(sheet.crop((sheet.width - 96, row * 96, sheet.width, row * 96 + 96)), dtype=int)
        assert np.abs(shown - expected).mean() < 2, model

    # The inputs it made: a guide whose disc moves, a mask that is white (generate) in the middle only.
    guide, mask = read_frames(Path(report["inputs"]["guide"])), read_frames(Path(report["inputs"]["mask"]))
    assert len(guide) == len(mask) == 9 and not np.array_equal(guide[0], guide[-1])
    assert mask[0, 32, 32].tolist() == [255, 255, 255] and mask[0, 2, 2].tolist() == [0, 0, 0]


def test_a_model_that_fails_is_reported_and_the_exit_status_says_so(tmp_path: Path, model_cache: Path, capsys) -> None:
    # A definition whose weights folder does not exist: loading fails, the other model still runs.
    defaults = tmp_path / "defaults"
    defaults.mkdir()
    broken = {"model": {"name": "no weights", "architecture": "t2v", "weights": {"local_dir": str(tmp_path / "none")}}}
    (defaults / "absent_weights.json").write_text(json.dumps(broken))
    out = tmp_path / "run"
    argv = ["compare", "--models", "wan_tiny_t2v,absent_weights", "--output-dir", str(out), "--repeat", "2"]
    argv += ["--cache-dir", str(model_cache), "--defaults-dir", str(defaults), "--resolution", "64x64", "--frames", "5"]
    assert main(argv) == 1
    report = json.loads((out / "results.json").read_text())
    assert [(result["model"], result["round"], result["status"]) for result in report["results"]] == [
        ("wan_tiny_t2v", 1, "ok"),
        ("absent_weights", 1, "failed"),
        ("wan_tiny_t2v", 2, "ok"),
        ("absent_weights", 2, "failed"),
    ]
    failed = report["results"][1]
    assert "ModelLoadError" in failed["error"] and "absent_weights" in failed["error"]
    assert failed["output"] is None and failed["frames"] is None
    assert (out / "wan_tiny_t2v.mp4").is_file() and (out / "wan_tiny_t2v_round2.mp4").is_file()
    assert [entry["round"] for entry in report["rounds"]] == [1, 2]
    assert (
        report["memory_growth_bytes"]
        == report["rounds"][1]["memory_after_bytes"] - report["rounds"][0]["memory_after_bytes"]
    )
    assert PIL.Image.open(report["contact_sheet"]).height == 96  # only the model that produced a video
    assert "absent_weights: failed" in capsys.readouterr().out


def test_an_unknown_model_stops_before_anything_runs(tmp_path: Path, capsys) -> None:
    assert main(["compare", "--models", "nope", "--output-dir", str(tmp_path / "x")]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
