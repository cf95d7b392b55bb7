"""The dashboard in a real browser during a real run: Debian's chromium, headless, driven by Selenium through
chromedriver (scripts/test.sh installs both), opens a travel run's page on a dashboard served by uvicorn while
`python worker.py --once` generates it with the tiny models; the page must show the run's tasks moving through their
states, and in the end play the stitched mp4 (its `duration` > 0, time advancing)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from source.dashboard.app import create_app
from source.demo import KEYFRAMES_DIR
from source.queue import open_queue

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = os.environ.get("DASHBOARD_SCREENSHOTS_DIR")  # set to write the README's screenshots
SEGMENT_FRAMES, OVERLAP, FPS = [41, 41], 8, 16

# Records every distinct state of the run tree the page shows (statuses and progress values), every 50 ms.
RECORDER = """
window.seenStates = [];
setInterval(() => {
  const items = [...document.querySelectorAll('#children li')].map(
    (li) => li.dataset.status + ':' + ([...li.querySelectorAll(':scope > progress')].map((p) => p.value).join('')));
  const state = document.getElementById('task-status').textContent + '|' + items.join(',');
  if (window.seenStates[window.seenStates.length - 1] !== state) window.seenStates.push(state);
}, 50);
"""

PLAY = """
const done = arguments[arguments.length - 1];
const video = document.querySelector('#output video');
if (!video) { done({error: 'no video element'}); return; }
const report = () => done({duration: video.duration, time: video.currentTime, error: video.error && video.error.code});
video.muted = true;
video.play().then(() => setTimeout(report, 1500)).catch((error) => done({error: String(error)}));
"""


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail("Debian's chromium and chromium-driver are needed (scripts/test.sh installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(app, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("the dashboard did not start")
        time.sleep(0.05)
    return server


def _payload() -> dict:
    keyframes = sorted(str(path) for path in KEYFRAMES_DIR.glob("*.png"))[:3]
    return {
        "orchestrator_details": {
            "model_name": "wan_tiny_i2v_2_2",
            "model_type": "i2v",
            "input_image_paths_resolved": keyframes,
            "num_new_segments_to_generate": 2,
            "segment_frames_expanded": SEGMENT_FRAMES,
            "frame_overlap_expanded": [OVERLAP],
            "parsed_resolution_wh": "64x64",
            "fps_helpers": FPS,
            "base_prompt": "a quiet street at night",
            "seed_base": 5,
        }
    }


@pytest.mark.slow
def test_a_travel_run_moves_on_the_page_and_its_video_plays(browser, tmp_path: Path, model_cache: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'tasks.db'}"
    outputs = tmp_path / "outputs"
    queue = open_queue(db_url)
    queue.migrate()
    run_id = queue.enqueue("travel_orchestrator", _payload(), project_id="p")
    port = _free_port()
    server = _serve(create_app(queue, output_dir=outputs), port)
    try:
        browser.get(f"http://127.0.0.1:{port}/tasks/{run_id}")
        browser.execute_script(RECORDER)
        env = {**os.environ, "WAN2GP_CACHE": str(model_cache), "HW_LORA_DIR": str(tmp_path / "loras")}
        worker = subprocess.run(
            [
                sys.executable,
                "worker.py",
                "--once",
                "--db",
                db_url,
                "--output-dir",
                str(outputs),
                "--retry-delay",
                "0",
                "--input-root",
                str(KEYFRAMES_DIR),
                "--device",
                "cpu",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert worker.returncode == 0, worker.stderr[-3000:]
        WebDriverWait(browser, 20).until(
            lambda driver: (
                "Complete" in driver.find_element(By.ID, "task-status").text
                and driver.find_elements(By.CSS_SELECTOR, "#output video")
            )
        )
        states = browser.execute_script("return window.seenStates")
        running = [state for state in states if "In Progress:" in state]
        # The page followed the run: children appeared, went In Progress with moving progress bars, and completed.
        assert len(running) >= 2, states
        assert states[-1].startswith("Complete|") and states[-1].count("Complete:") == 3, states
        contract = browser.find_element(By.ID, "contract").text
        expected = sum(SEGMENT_FRAMES) - OVERLAP
        assert f"= {expected} frames; delivered {expected}" in contract

        played = browser.execute_async_script(PLAY)
        assert played.get("error") is None, played
        assert abs(played["duration"] - expected / FPS) < 0.2, played
        assert played["time"] > 0, played
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / "dashboard_task.png"))
            browser.get(f"http://127.0.0.1:{port}/")
            WebDriverWait(browser, 10).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#tasks tbody tr"))
            browser.save_screenshot(str(Path(SCREENSHOTS) / "dashboard_queue.png"))
    finally:
        server.should_exit = True
        queue.close()
