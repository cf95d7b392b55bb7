"""Wan2GP/catalog.py and the bundled Wan2GP/defaults/*.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from Wan2GP.catalog import ARCHITECTURES, CatalogError, default_catalog_dir, load_catalog
from Wan2GP.schedule import build_plan

REQUIRED_IDS = {
    "wan_2_2_i2v_lightning_baseline_2_2_2",
    "wan_2_2_i2v_lightning_baseline_3_3",
    "wan_2_2_vace_lightning_baseline_2_2_2",
    "vace_14B",
    "vace_14B_fake_cocktail_2_2",
    "optimised-t2i",
    "t2v_2_2",
    "i2v_2_2",
    "t2v",
    "wan_tiny_t2v",
    "wan_tiny_i2v_2_2",
    "wan_tiny_vace",
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_every_bundled_file_loads(catalog):
    files = {path.stem for path in default_catalog_dir().glob("*.json")}
    assert REQUIRED_IDS <= files
    assert set(catalog.ids()) == files
    for model_id in catalog.ids():
        definition = catalog.get(model_id)
        assert definition.id == model_id
        assert definition.architecture in ARCHITECTURES
        assert definition.experts in (1, 2)
        assert definition.fps == definition.spec.fps
        assert len(definition.loras_multipliers) in (0, len(definition.loras))
        raw = json.loads((default_catalog_dir() / f"{model_id}.json").read_text())
        assert set(raw) - {"model"} == set(definition.settings)


@pytest.mark.parametrize(
    ("model_id", "repo"),
    [
        ("i2v_2_2", "Wan-AI/Wan2.2-I2V-A14B-Diffusers"),
        ("t2v_2_2", "Wan-AI/Wan2.2-T2V-A14B-Diffusers"),
        ("t2v", "Wan-AI/Wan2.1-T2V-14B-Diffusers"),
        ("vace_14B", "Wan-AI/Wan2.1-VACE-14B-diffusers"),
        ("wan_2_2_vace_lightning_baseline_2_2_2", "linoyts/Wan2.2-VACE-Fun-14B-diffusers"),
    ],
)
def test_weights_repos(catalog, model_id, repo):
    assert catalog.get(model_id).weights.repo_id == repo
    assert catalog.get(model_id).weights.kind == "repo"


def test_tiny_models(catalog):
    tiny_t2v, tiny_i2v, tiny_vace = (catalog.get(f"wan_tiny_{kind}") for kind in ("t2v", "i2v_2_2", "vace"))
    assert (tiny_t2v.architecture, tiny_t2v.experts) == ("t2v", 1)
    assert (tiny_i2v.architecture, tiny_i2v.experts, tiny_i2v.is_i2v) == ("i2v_2_2", 2, True)
    assert (tiny_vace.architecture, tiny_vace.experts, tiny_vace.is_vace) == ("vace_14B", 1, True)
    for tiny in (tiny_t2v, tiny_i2v, tiny_vace):
        assert tiny.is_tiny and tiny.weights.kind == "tiny"
        assert tiny.settings["resolution"] == "64x64" and tiny.settings["video_length"] == 9
        assert tiny.default_resolution() == (64, 64)
    settings = tiny_i2v.settings
    plan = build_plan(
        num_inference_steps=settings["num_inference_steps"],
        sample_solver=settings["sample_solver"],
        flow_shift=settings["flow_shift"],
        guidance_phases=settings["guidance_phases"],
        guidance_scale=settings["guidance_scale"],
        guidance2_scale=settings["guidance2_scale"],
        switch_threshold=settings["switch_threshold"],
    )
    assert [s.expert for s in plan.steps] == ["high", "high", "low", "low"]


def test_lightning_defaults_give_the_documented_splits(catalog):
    vace = catalog.get("wan_2_2_vace_lightning_baseline_2_2_2").settings
    plan = build_plan(
        num_inference_steps=vace["num_inference_steps"],
        sample_solver=vace["sample_solver"],
        flow_shift=vace["flow_shift"],
        guidance_phases=vace["guidance_phases"],
        guidance_scale=vace["guidance_scale"],
        guidance2_scale=vace["guidance2_scale"],
        guidance3_scale=vace["guidance3_scale"],
        switch_threshold=vace["switch_threshold"],
        switch_threshold2=vace["switch_threshold2"],
        model_switch_phase=vace["model_switch_phase"],
    )
    assert [s.phase for s in plan.steps] == [1, 1, 2, 2, 3, 3]
    assert [s.expert for s in plan.steps] == ["high"] * 4 + ["low"] * 2


def test_legacy_alias_and_unknown_ids(catalog):
    assert catalog.get("lightning_baseline_2_2_2").id == "wan_2_2_vace_lightning_baseline_2_2_2"
    assert "lightning_baseline_2_2_2" in catalog
    with pytest.raises(CatalogError) as error:
        catalog.get("i2v_14B")
    assert "i2v_14B" in str(error.value) and "wan_tiny_t2v" in str(error.value)


def test_model_loras_and_inheritance(catalog):
    optimised = catalog.get("optimised-t2i")
    assert len(optimised.loras) == 4 and optimised.loras_multipliers == ("1.0", "0.2", "0.5", "0.5")
    assert optimised.urls == "t2v_2_2" and optimised.experts == 2
    assert catalog.get("vace_14B_fake_cocktail_2_2").weights.kind == "local"


def _write(folder: Path, name: str, data: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(data))


def _tiny(**settings) -> dict:
    return {
        "model": {"name": "x", "architecture": "t2v", "weights": {"tiny": {"seed": 1}}, "experts": 1},
        **settings,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**_tiny(), "model": {**_tiny()["model"], "architecture": 7}}, "model.architecture"),
        (
            {**_tiny(), "model": {**_tiny()["model"], "weights": {"repo_id": "a/b", "tiny": {"seed": 1}}}},
            "model.weights",
        ),
        ({**_tiny(), "model": {**_tiny()["model"], "architecture": "i2v_2_2"}}, "two experts"),
        (
            {
                **_tiny(),
                "model": {
                    **_tiny()["model"],
                    "experts": 2,
                    "weights": {
                        "repo_id": "a/b",
                        "checkpoints": ["https://huggingface.co/a/b/resolve/main/x.safetensors"],
                    },
                },
            },
            "model.weights.checkpoints: expected one checkpoint per expert (2), got 1",
        ),
        ({**_tiny(), "model": {**_tiny()["model"], "vae_dtype": "int8"}}, "model.vae_dtype"),
        (
            {**_tiny(), "model": {**_tiny()["model"], "loras": ["a"], "loras_multipliers": ["1;0"]}},
            "model.loras_multipliers[0]",
        ),
        (_tiny(num_inference_steps="six"), "num_inference_steps"),
        (_tiny(guidance_phases=4), "guidance_phases"),
        (_tiny(sample_solver="lcm"), "sample_solver"),
        (_tiny(resolution="wide"), "resolution"),
        (_tiny(guidance_phases=3, switch_threshold=500, switch_threshold2=900), "switch_threshold2"),
        ([1, 2], "model"),
    ],
)
def test_a_bad_file_names_file_and_field(tmp_path, data, message):
    _write(tmp_path, "broken", data)
    with pytest.raises(CatalogError) as error:
        load_catalog(tmp_path)
    assert "broken.json" in str(error.value)
    assert message in str(error.value)


def test_extra_dirs_add_models_and_merge_over_defaults(tmp_path):
    defaults = tmp_path / "defaults"
    shutil.copytree(default_catalog_dir(), defaults)
    finetunes = tmp_path / "finetunes"
    finetunes.mkdir()
    _write(finetunes, "my_tiny", _tiny(num_inference_steps=2))
    _write(finetunes, "wan_tiny_t2v", {"model": {"name": "renamed"}, "num_inference_steps": 8})
    catalog = load_catalog(defaults, extra_dirs=[finetunes])
    assert catalog.get("my_tiny").settings["num_inference_steps"] == 2
    merged = catalog.get("wan_tiny_t2v")
    assert merged.name == "renamed" and merged.settings["num_inference_steps"] == 8
    assert merged.weights.tiny_seed == 1234  # untouched keys come from the default file
