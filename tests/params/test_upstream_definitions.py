"""Upstream model definition files, loaded as they are.

The fixtures under tests/fixtures/upstream_defaults are unmodified copies of the Wan-family definition files (plus a
few of other families) from deepbeepmeep/Wan2GP@8681e9f (`defaults/`) and peteromallet/Headless-Wan2GP@50066ea
(`Wan2GP/defaults/`). None of them has our `weights`/`experts` keys: the catalog fills them in from
Wan2GP/architectures.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest

from source.params import GenerationTaskParams, PayloadError, parse_model
from tests.log_capture import captured_messages
from Wan2GP.architectures import ARCHITECTURES
from Wan2GP.catalog import CatalogError, default_catalog_dir, load_catalog
from Wan2GP.request import InvalidGenerationParams, check_param_names, resolve_request, setting_status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_defaults"
WAN2GP = FIXTURES / "wan2gp_8681e9f"
HEADLESS = FIXTURES / "headless_50066ea"


def _architecture(path: Path) -> str:
    return json.loads(path.read_text())["model"]["architecture"]


@pytest.mark.parametrize("folder", [WAN2GP, HEADLESS], ids=["wan2gp", "headless"])
def test_every_upstream_file_loads_unmodified(folder: Path, tmp_path: Path) -> None:
    catalog = load_catalog(extra_dirs=[folder])
    image = tmp_path / "key.png"
    PIL.Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    files = sorted(folder.glob("*.json"))
    assert len(files) >= 30
    for path in files:
        if _architecture(path) in ARCHITECTURES:
            definition = catalog.get(path.stem)
            assert definition.source_file == path
            assert definition.experts in (1, 2)
            # Every setting of a plain upstream file still resolves into a request: defaults, the images its
            # architecture takes, and the built-in LoRAs as the worker's LoRA store hands them over, downloaded.
            params: dict = {"builtin_lora_files": [f"{index}.safetensors" for index in range(len(definition.loras))]}
            if definition.spec.takes_start_image:
                params["image_start"] = str(image)
            if definition.spec.takes_end_image:
                params["image_end"] = str(image)
            resolve_request(params, definition)
        else:
            assert path.stem in catalog.set_aside
            with pytest.raises(CatalogError, match=f"architecture {_architecture(path)!r} is not one this engine"):
                catalog.get(path.stem)


# (model id, architecture, experts, weights: a repo id, or the number of single-file checkpoints and their base repo)
EXPECTED = [
    ("t2v_1.3B", "t2v_1.3B", 1, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    ("i2v", "i2v", 1, "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"),
    ("i2v_720p", "i2v", 1, "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"),  # architecture i2v, the 720p checkpoint
    ("i2v_fusionix", "i2v", 1, "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"),  # URLs "i2v": that model's weights
    ("flf2v_720p", "flf2v_720p", 1, "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers"),
    ("ti2v_2_2", "ti2v_2_2", 1, "Wan-AI/Wan2.2-TI2V-5B-Diffusers"),
    ("vace_1.3B", "vace_1.3B", 1, "Wan-AI/Wan2.1-VACE-1.3B-diffusers"),  # URLs "t2v_1.3B" + the VACE module
    ("vace_14B_2_2", "vace_14B_2_2", 2, "linoyts/Wan2.2-VACE-Fun-14B-diffusers"),
    ("vace_fun_14B_2_2", "vace_14B_2_2", 2, "linoyts/Wan2.2-VACE-Fun-14B-diffusers"),
    ("vace_fun_14B_cocktail_2_2", "vace_14B_2_2", 2, "linoyts/Wan2.2-VACE-Fun-14B-diffusers"),
    ("t2v_fusionix", "t2v", 1, (1, "Wan-AI/Wan2.1-T2V-14B-Diffusers")),  # a finetune: its own checkpoint
    ("i2v_2_2_Enhanced_Lightning_v2", "i2v_2_2", 2, (2, "Wan-AI/Wan2.2-I2V-A14B-Diffusers")),
    ("vace_14B_sf", "vace_14B", 1, (1, "Wan-AI/Wan2.1-VACE-14B-diffusers")),
]


@pytest.mark.parametrize(("model_id", "architecture", "experts", "weights"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_weights_and_experts_follow_from_architecture_and_urls(model_id, architecture, experts, weights) -> None:
    definition = load_catalog(extra_dirs=[WAN2GP]).get(model_id)
    assert (definition.architecture, definition.experts) == (architecture, experts)
    if isinstance(weights, str):
        assert (definition.weights.kind, definition.weights.repo_id) == ("repo", weights)
    else:
        count, base = weights
        assert definition.weights.kind == "checkpoints"
        assert definition.weights.repo_id == base
        assert definition.weights.checkpoints is not None and len(definition.weights.checkpoints) == count
        # The 16-bit file of the ones upstream lists, never the quanto int8 variant.
        assert all("quanto" not in url for url in definition.weights.checkpoints)


def test_ti2v_runs_at_its_own_frame_rate() -> None:
    assert load_catalog(extra_dirs=[WAN2GP]).get("ti2v_2_2").fps == 24


def test_an_upstream_file_over_a_bundled_one_keeps_our_weights_and_names_its_settings(tmp_path: Path) -> None:
    # Headless-Wan2GP's lightning 3+3 VACE file names "vace_fun_14B_2_2" (not bundled) as its URLs: alone in a
    # folder it still resolves, through upstream's base model table.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "wan_2_2_vace_lightning_baseline_3_3.json").write_bytes(
        (HEADLESS / "wan_2_2_vace_lightning_baseline_3_3.json").read_bytes()
    )
    lone = load_catalog(extra_dirs=[alone]).get("wan_2_2_vace_lightning_baseline_3_3")
    assert lone.weights.repo_id == "linoyts/Wan2.2-VACE-Fun-14B-diffusers" and lone.experts == 2

    catalog = load_catalog(extra_dirs=[WAN2GP])
    merged = catalog.get("i2v_2_2")  # bundled, and overridden by upstream's i2v_2_2.json
    assert merged.weights.repo_id == "Wan-AI/Wan2.2-I2V-A14B-Diffusers" and merged.weights_origin == "model.weights"
    assert merged.urls[0].endswith("wan2.2_image2video_14B_high_mbf16.safetensors")  # upstream's URLs won
    assert merged.setting_files["guidance_scale"] == WAN2GP / "i2v_2_2.json"
    assert merged.setting_files["sample_solver"] == default_catalog_dir() / "i2v_2_2.json"


@pytest.mark.parametrize(
    ("urls", "origin"),
    [
        ("no_such_model", "is not a model in the catalog"),
        ("loop_b", "a circular reference"),
    ],
)
def test_urls_naming_nothing_usable_fall_back_to_the_architecture(tmp_path: Path, urls: str, origin: str) -> None:
    for name, target in (("loop_a", urls), ("loop_b", "loop_a")):
        data = {"model": {"name": name, "architecture": "t2v_1.3B", "URLs": target}}
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    catalog = load_catalog(extra_dirs=[tmp_path])
    for name in ("loop_a", "loop_b"):
        assert catalog.get(name).weights.repo_id == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert any(origin in catalog.get(name).weights_origin for name in ("loop_a", "loop_b"))


def test_unread_model_keys_are_listed_once_at_debug() -> None:
    with captured_messages("DEBUG") as messages:
        load_catalog(extra_dirs=[WAN2GP])
    listed = [message for message in messages if "accepted and not used" in message]
    assert len(listed) == 1
    for key in ("group", "modules", "auto_quantize", "settings_dir"):
        assert f"{key} (" in listed[0]


def test_settings_we_do_not_implement_are_accepted_in_files_and_refused_in_requests() -> None:
    definition = load_catalog(extra_dirs=[WAN2GP]).get("t2v_fusionix")
    assert definition.settings["tea_cache_setting"] is not None and definition.settings["RIFLEx_setting"] is not None
    assert setting_status("tea_cache_setting") == "not implemented"
    assert setting_status("cfg_star_switch") == "not implemented"
    assert setting_status("batch_size") == "UI only"
    assert setting_status("flow_shift") == "used"
    resolve_request(
        {"builtin_lora_files": ["x.safetensors"] * len(definition.loras)}, definition
    )  # the file's own values do not stop it

    with pytest.raises(InvalidGenerationParams) as error:
        check_param_names({"prompt": "x", "tea_cache_setting": 2, "RIFLEx_setting": 1})
    assert error.value.fields == ("RIFLEx_setting", "tea_cache_setting")
    assert "not implemented" in str(error.value)

    with pytest.raises(PayloadError) as payload_error:
        parse_model(GenerationTaskParams, {"prompt": "x", "masking_strength": 0.1})
    assert "masking_strength: not implemented" in str(payload_error.value)


def test_the_16_bit_checkpoint_is_chosen_whatever_the_order(tmp_path: Path) -> None:
    hub = "https://huggingface.co/someone/finetunes/resolve/main/"
    urls = [hub + "my_t2v_quanto_mbf16_int8.safetensors", hub + "my_t2v_mbf16.safetensors"]
    data = {"model": {"name": "mine", "architecture": "t2v", "URLs": urls}}
    (tmp_path / "mine.json").write_text(json.dumps(data))
    definition = load_catalog(extra_dirs=[tmp_path]).get("mine")
    assert definition.weights.checkpoints == (hub + "my_t2v_mbf16.safetensors",)


def test_an_invalid_file_in_an_extra_folder_is_set_aside_not_the_whole_catalog(tmp_path: Path) -> None:
    (tmp_path / "lcm_model.json").write_text(
        json.dumps({"model": {"name": "x", "architecture": "t2v"}, "sample_solver": "lcm"})
    )
    (tmp_path / "not_json.json").write_text("{")
    (tmp_path / "fine.json").write_text(json.dumps({"model": {"name": "y", "architecture": "t2v_1.3B"}}))
    with captured_messages("WARNING") as warnings:
        catalog = load_catalog(extra_dirs=[tmp_path])
    assert catalog.get("fine").architecture == "t2v_1.3B"
    assert [message for message in warnings if "lcm_model.json" in message] == [
        f"model definition set aside: {tmp_path / 'lcm_model.json'}: sample_solver: expected one of "
        '"euler", "unipc", "dpm++", "dpm++_sde" or "" (= unipc), got \'lcm\''
    ]
    with pytest.raises(CatalogError, match="lcm_model.json: sample_solver"):
        catalog.get("lcm_model")
    with pytest.raises(CatalogError, match="not_json.json: not valid JSON"):
        catalog.get("not_json")
    # The same file among the bundled ones is a broken installation: the load stops.
    (tmp_path / "not_json.json").unlink()
    with pytest.raises(CatalogError, match="lcm_model.json: sample_solver"):
        load_catalog(tmp_path)
