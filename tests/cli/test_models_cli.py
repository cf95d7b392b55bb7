"""`python -m source.cli models` and `models show NAME`, called in-process, over the bundled catalog and the upstream
definition fixtures (tests/fixtures/upstream_defaults)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download
from local_http import FakeHub

from source.cli.__main__ import main
from Wan2GP.architectures import ARCHITECTURES
from Wan2GP.model_folders import tiny_model_folder

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_defaults" / "wan2gp_8681e9f"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_the_list_names_every_model_with_its_architecture_experts_and_weights(capsys, tmp_path: Path) -> None:
    listed = run_json(capsys, "models", "--json", "--cache-dir", str(tmp_path), "--defaults-dir", str(UPSTREAM))
    by_id = {row["id"]: row for row in listed["models"]}
    assert by_id["t2v_2_2"]["experts"] == 2 and by_id["t2v_2_2"]["weights"].startswith("Wan-AI/Wan2.2-T2V-A14B")
    assert by_id["ti2v_2_2"]["architecture"] == "ti2v_2_2" and by_id["ti2v_2_2"]["size"] == "5B"
    assert by_id["t2v_fusionix"]["weights"] == "1 checkpoint file(s) + Wan-AI/Wan2.1-T2V-14B-Diffusers"
    assert all(row["architecture"] in ARCHITECTURES for row in listed["models"])
    # Upstream's other families are not offered, and the reason is kept.
    assert "architecture 'hunyuan' is not one this engine runs" in listed["set_aside"]["hunyuan"]
    assert "hunyuan" not in by_id


def test_cached_means_on_this_machine(capsys, tmp_path: Path, model_cache: Path, fake_hub: FakeHub) -> None:
    # A tiny model counts once built in the engine's cache; a repo once it is in the Hugging Face cache.
    before = {row["id"]: row for row in run_json(capsys, "models", "--json", "--cache-dir", str(tmp_path))["models"]}
    assert not before["wan_tiny_t2v"]["cached"] and not before["t2v"]["cached"]

    built = tiny_model_folder(model_cache, "wan_tiny_t2v")
    if not built.is_dir():
        from Wan2GP.tiny import ensure_tiny_model

        ensure_tiny_model(built, "t2v", 1, 1234)
    repo = tmp_path / "repo"
    (repo / "transformer").mkdir(parents=True)
    (repo / "transformer" / "config.json").write_text("{}" * 500)
    fake_hub.add_repo("Wan-AI/Wan2.1-T2V-14B-Diffusers", repo)
    snapshot_download("Wan-AI/Wan2.1-T2V-14B-Diffusers")

    after = {row["id"]: row for row in run_json(capsys, "models", "--json", "--cache-dir", str(model_cache))["models"]}
    assert after["wan_tiny_t2v"]["cached"] and after["wan_tiny_t2v"]["cached_bytes"] > 10_000
    assert after["t2v"]["cached"] and after["t2v"]["cached_bytes"] >= 1000
    assert not after["t2v_2_2"]["cached"]


def test_show_gives_every_setting_with_its_file_and_what_the_engine_does(capsys, tmp_path: Path) -> None:
    shown = run_json(capsys, "models", "show", "i2v_2_2", "--json", "--defaults-dir", str(UPSTREAM))
    settings = {row["name"]: row for row in shown["settings"]}
    bundled = str(Path("Wan2GP/defaults/i2v_2_2.json").resolve())
    # upstream's file overrides guidance_scale, the bundled file still gives the solver, the engine the rest
    assert settings["guidance_scale"]["from"] == str(UPSTREAM / "i2v_2_2.json")
    assert settings["sample_solver"]["from"] == bundled
    assert settings["control_net_weight"] == {
        "name": "control_net_weight",
        "value": 1.0,
        "from": "engine default",
        "status": "used",
    }
    assert settings["masking_strength"]["status"] == "not implemented"
    assert shown["weights_origin"] == "model.weights"
    assert set(shown["definition_files"]) == {bundled, str(UPSTREAM / "i2v_2_2.json")}

    fusionix = run_json(capsys, "models", "show", "t2v_fusionix", "--json", "--defaults-dir", str(UPSTREAM))
    statuses = {row["name"]: row["status"] for row in fusionix["settings"]}
    assert statuses["tea_cache_setting"] == "not implemented" and statuses["repeat_generation"] == "UI only"
    assert fusionix["checkpoints"] == [
        "https://huggingface.co/DeepBeepMeep/Wan2.1/resolve/main/Wan14BT2VFusioniX_fp16.safetensors"
    ]


def test_show_of_a_model_not_offered_says_why(capsys) -> None:
    assert main(["models", "show", "hunyuan", "--defaults-dir", str(UPSTREAM)]) == 1
    assert "architecture 'hunyuan' is not one this engine runs" in capsys.readouterr().err
    assert main(["models", "show", "no_such_model"]) == 1
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


def test_the_table_form_lists_the_same_models(capsys, tmp_path: Path) -> None:
    assert main(["models", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for model_id in ("wan_tiny_t2v", "i2v_2_2", "vace_14B"):
        assert model_id in out
