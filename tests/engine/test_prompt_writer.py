"""The prompt writer: a tiny random-weight Qwen2.5-VL (built from a seed, saved, loaded through the same code as
Qwen/Qwen2.5-VL-7B-Instruct) writes prompts; the instruction, the side-by-side picture and the engine's handling of
the VLM's memory are checked on the CPU. With random weights the prompts are gibberish: only their determinism and
their plumbing can be checked here (bench/vlm_prompts.py measures the real-size model on a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from Wan2GP.engine import WanEngine
from Wan2GP.prompt_text import (
    BACKGROUND,
    BORDER_PX,
    DEFAULT_BASE_PROMPT,
    END_BORDER,
    GAP_PX,
    START_BORDER,
    duration_text,
    instruction,
    side_by_side,
)
from Wan2GP.prompt_writer import (
    PromptRequest,
    PromptWriter,
    PromptWriterUnavailable,
    resolve_prompt_model,
)


@pytest.fixture(scope="module")
def keyframes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keyframes")
    rng = np.random.default_rng(0)
    start, end = folder / "start.png", folder / "end.png"
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(start)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(end)
    return start, end


@pytest.fixture(scope="module")
def tiny_folder(model_cache: Path) -> Path:
    return resolve_prompt_model("tiny", model_cache)


def test_instruction_carries_the_base_prompt_and_the_duration() -> None:
    pair = instruction(base_prompt="a cat walks to the door", frames=81, fps=16, single_image=False)
    assert "a cat walks to the door" in pair.user
    assert "approximately 5.1 seconds (81 frames at 16 FPS)" in pair.user
    assert "EXACTLY THREE SENTENCES" in pair.system and "PRIMARY MOTION" in pair.system
    assert "LEFT image" in pair.system and "RIGHT image" in pair.system
    single = instruction(base_prompt="", frames=33, fps=16, single_image=True)
    assert DEFAULT_BASE_PROMPT in single.user and "approximately 2.1 seconds (33 frames at 16 FPS)" in single.user
    assert "SCENE & CAMERA" in single.system and "ENVIRONMENTAL DYNAMICS" in single.system
    assert duration_text(53, 24) == "approximately 2.2 seconds (53 frames at 24 FPS)"


def test_side_by_side_puts_start_left_in_green_and_end_right_in_red(keyframes) -> None:
    start, end = (Image.open(path).convert("RGB") for path in keyframes)
    picture = np.asarray(side_by_side(start, end))
    height = 96 + 2 * BORDER_PX
    end_width = round(64 * 96 / 48)  # the end image is scaled to the start image's height
    assert picture.shape == (height, 160 + end_width + 4 * BORDER_PX + GAP_PX, 3)
    left_border, right_border = picture[height // 2, 0], picture[height // 2, -1]
    assert tuple(left_border) == START_BORDER and tuple(right_border) == END_BORDER
    gap = picture[height // 2, 160 + 2 * BORDER_PX]
    assert tuple(gap) == BACKGROUND
    inner = picture[BORDER_PX : BORDER_PX + 96, BORDER_PX : BORDER_PX + 160]
    assert np.array_equal(inner, np.asarray(start))  # the start image itself, unscaled, on the left


def test_tiny_model_writes_the_same_prompt_for_the_same_request(tiny_folder: Path, keyframes, tmp_path: Path) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        path.name for path in tiny_folder.iterdir()
    }
    start, end = keyframes
    request = PromptRequest(start, end, "a cat walks", 33, 16.0, debug_image=tmp_path / "seen.jpg")
    with PromptWriter(tiny_folder, device=torch.device("cpu"), max_new_tokens=12) as writer:
        first = writer.write(request)
        assert first and first == writer.write(request)  # greedy decoding: deterministic
        single = writer.write(PromptRequest(start, None, "", 33, 16.0))
        assert single
    seen = Image.open(tmp_path / "seen.jpg")
    assert seen.size == (160 + 128 + 4 * BORDER_PX + GAP_PX, 96 + 2 * BORDER_PX)
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(request)


def test_unreadable_keyframe_is_an_error_of_that_request(tiny_folder: Path, keyframes, tmp_path: Path) -> None:
    not_an_image = tmp_path / "broken.png"
    not_an_image.write_bytes(b"not a png")
    with PromptWriter(tiny_folder, device=torch.device("cpu"), max_new_tokens=4) as writer:
        with pytest.raises(ValueError, match="keyframe could not be read"):
            writer.write(PromptRequest(keyframes[0], not_an_image, "x", 33, 16.0))


@pytest.mark.parametrize(
    ("source", "expected"),
    [("not a repo id!", "expected a Hugging Face repo id"), ("EMPTY_FOLDER", "could not be loaded")],
    ids=["bad name", "folder without a model"],
)
def test_a_prompt_model_that_cannot_load_is_unavailable(source: str, expected: str, tmp_path: Path) -> None:
    if source == "EMPTY_FOLDER":
        source = str(tmp_path)
    with pytest.raises(PromptWriterUnavailable, match=expected):
        PromptWriter(resolve_prompt_model(source, tmp_path), device=torch.device("cpu"))


def test_engine_writes_a_batch_and_reports_each_failure(model_cache: Path, keyframes, tmp_path: Path) -> None:
    engine = WanEngine(device="cpu", cache_dir=model_cache, prompt_model="tiny")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    done: list[tuple[int, int]] = []
    outcomes = engine.write_prompts(
        [PromptRequest(keyframes[0], keyframes[1], "a", 33, 16.0), PromptRequest(broken, None, "b", 33, 16.0)],
        max_new_tokens=6,
        on_prompt=lambda i, n: done.append((i, n)),
    )
    assert outcomes[0].prompt and outcomes[0].error is None
    assert outcomes[1].prompt is None and "keyframe could not be read" in outcomes[1].error
    assert done == [(1, 2), (2, 2)]
    assert engine.write_prompts([]) == []


class _FakeCuda:
    """The engine's memory decision on a CUDA device, with the device's free memory made up."""

    def __init__(self, engine: WanEngine, monkeypatch: pytest.MonkeyPatch, free_bytes: int) -> None:
        self.moves: list[str] = []
        monkeypatch.setattr(engine, "device", torch.device("cuda"))
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 80 * 2**30))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
        monkeypatch.setattr(engine, "_move_loaded", lambda device: self.moves.append(device.type))


@pytest.mark.parametrize(("free_gb", "expected_moves"), [(30, []), (5, ["cpu", "cuda"])], ids=["fits", "does not fit"])
def test_wan_model_waits_in_host_memory_only_when_both_do_not_fit(
    free_gb: int, expected_moves: list[str], model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = WanEngine(device="cpu", cache_dir=model_cache, prompt_model="tiny")
    engine.load("wan_tiny_t2v")
    fake = _FakeCuda(engine, monkeypatch, free_gb * 2**30)
    monkeypatch.setattr("Wan2GP.prompt_writer.weights_bytes", lambda folder: 16 * 10**9)  # a 7B model in bf16

    def no_writer(*args: object, **kwargs: object) -> None:
        raise PromptWriterUnavailable("stop here: only the placement is under test")

    monkeypatch.setattr("Wan2GP.prompt_writer.PromptWriter", no_writer)
    with pytest.raises(PromptWriterUnavailable):
        engine.write_prompts([PromptRequest(Path("a.png"), None, "", 5, 16.0)])
    assert fake.moves == expected_moves  # and back on the device afterwards, even when the VLM failed
    assert engine.loaded_model() == "wan_tiny_t2v"  # never dropped: no reload from disk


def test_the_gpu_benchmark_script_runs_in_tiny_mode(tmp_path: Path) -> None:
    """bench/vlm_prompts.py (bench/README.md) through the same PromptWriter, at tiny size on the CPU: it cannot rot."""
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "vlm.json"
    command = [sys.executable, "bench/vlm_prompts.py", "--tiny", "--prompts", "1", "--max-new-tokens", "3"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run([*command, "--json", str(out)], cwd=repo, env=env, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["parameters"] > 0
    assert [run["decoded_tokens_per_prompt"] for run in result["runs"]] == [[3]]
    assert result["runs"][0]["prompt_tokens"] > 1000  # the instruction and the picture's placeholders


def test_a_prompt_model_repo_comes_through_the_hub_client_and_writes_like_the_local_folder(
    fake_hub, tiny_folder: Path, keyframes, tmp_path: Path
) -> None:
    """A repo id goes through the real huggingface_hub client (into the Hub cache), as the Wan weights do; the fake
    Hub (tests/local_http.py) stands in for huggingface.co, which cannot be reached here."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for path in tiny_folder.iterdir():
        (repo / path.name).write_bytes(path.read_bytes())
    (repo / "chat_template.jinja").write_text("not fetched: the writer formats the chat itself")
    fake_hub.add_repo("test-org/tiny-qwen-vl", repo)
    folder = resolve_prompt_model("test-org/tiny-qwen-vl", tmp_path / "engine_cache")
    assert "chat_template.jinja" not in {path.name for path in folder.iterdir()}
    request = PromptRequest(keyframes[0], keyframes[1], "a cat walks", 33, 16.0)
    with PromptWriter(folder, device=torch.device("cpu"), max_new_tokens=6) as from_hub:
        with PromptWriter(tiny_folder, device=torch.device("cpu"), max_new_tokens=6) as local:
            assert from_hub.write(request) == local.write(request)
    with pytest.raises(PromptWriterUnavailable, match="test-org/absent"):
        resolve_prompt_model("test-org/absent", tmp_path / "engine_cache")


def test_the_prompt_writer_path_does_not_import_diffusers() -> None:
    """The VLM path needs transformers only: diffusers (the Wan model classes) stays out of a process that only
    writes prompts."""
    script = "import sys, Wan2GP.prompt_writer; print('diffusers' in sys.modules)"
    answer = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120)
    assert answer.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("placement", "budget_gb", "expected_moves", "still_loaded"),
    [
        (None, 10, ["cpu", "cuda"], True),  # 30 GB free on the card, but this process's budget leaves 10: move
        (None, None, [], True),  # no budget: the card's 30 GB free hold both
        ("stream_blocks", 10, [], False),  # offloaded parts are tied to their hooks: unloaded, reloaded next time
    ],
    ids=["budget decides", "card decides", "streamed model is unloaded"],
)
def test_the_budget_and_the_placement_decide_how_room_is_made_for_the_prompt_model(
    placement: str | None,
    budget_gb: int | None,
    expected_moves: list[str],
    still_loaded: bool,
    model_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = WanEngine(device="cpu", cache_dir=model_cache, prompt_model="tiny", placement=placement)
    engine.load("wan_tiny_t2v")
    fake = _FakeCuda(engine, monkeypatch, 30 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    engine.vram_budget = budget_gb * 2**30 if budget_gb is not None else None
    monkeypatch.setattr("Wan2GP.prompt_writer.weights_bytes", lambda folder: 16 * 10**9)

    def no_writer(*args: object, **kwargs: object) -> None:
        raise PromptWriterUnavailable("stop here: only the placement is under test")

    monkeypatch.setattr("Wan2GP.prompt_writer.PromptWriter", no_writer)
    with pytest.raises(PromptWriterUnavailable):
        engine.write_prompts([PromptRequest(Path("a.png"), None, "", 5, 16.0)])
    assert fake.moves == expected_moves
    assert (engine.loaded_model() == "wan_tiny_t2v") is still_loaded
