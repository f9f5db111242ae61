"""The page in a real browser: Debian's Chromium, headless, driven by selenium through Debian's
chromedriver, with Chromium's fake microphone playing a French evaluation clip.

Pressing Start must give English captions with the reference's content words while the clip
is still playing (the page has sent less audio than the clip holds), translated speech must
arrive, and Stop must end with the summary. Screenshots are kept as test artifacts in
$RELAIS_TEST_ARTIFACTS, else out/test-artifacts/ (web-live.png, web-done.png,
web-overlay.png), with the browser's console log.

Chromium and chromedriver come from Debian (`tools/install.sh --test` installs them): where
either is missing the test skips, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import load_audio, load_manifest, need_tool
from relais.server.app import start_in_process
from relais.server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
CLIP_ID = "fleurs_fr_test_1690"  # 23.4 s of French: "we agree with the usoc's statement that ..."
# Content words of the clip's English reference (a caption must show at least two of them)
CONTENT_WORDS = ("agree", "statement", "interests", "athletes", "clubs", "sport", "olympic", "committee",
                 "organization", "organisation", "change")
FAKE_MIC_RATE_HZ = 48000
CAPTION_TIMEOUT_S = 120.0


def _need(tool: str) -> str:
    return need_tool(tool, "chromium and chromium-driver")


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    return _need("chromium"), _need("chromedriver")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    path = Path(os.environ.get("RELAIS_TEST_ARTIFACTS") or ROOT / "out" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def web_server(browser_paths, model_set):
    from relais.pipeline.engine import EngineConfig, TranslationEngine

    engine = TranslationEngine(EngineConfig(models_dir=model_set.root))
    config = ServerConfig().replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "web_port": 0},
                                    models={"dir": str(model_set.root)}, runtime={"providers": ["cpu"]})
    with start_in_process(config, engine=engine) as handle:
        yield handle


@pytest.fixture(scope="module")
def clip():
    return next(u for u in load_manifest("fr_en_dev") if u.id == CLIP_ID)


def _fake_mic_file(utt, folder: Path) -> Path:
    """The clip as Chromium's fake capture reads it: a 16-bit PCM WAV, here at 48 kHz."""
    audio = soxr.resample(load_audio(utt.path), 16000, FAKE_MIC_RATE_HZ)
    path = folder / f"{utt.id}.48k.wav"
    sf.write(path, np.clip(audio, -1.0, 1.0), FAKE_MIC_RATE_HZ, subtype="PCM_16")
    return path


def _chromium(paths: tuple[str, str], folder: Path, fake_mic: Path | None = None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1200,760", f"--user-data-dir={folder / 'profile'}",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    if fake_mic is not None:  # played once (no loop), from when the page opens the microphone
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_mic}%noloop")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(folder / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


_SNAPSHOT = """
const relais = window.relais, style = (id) => getComputedStyle(document.getElementById(id)).color;
return JSON.stringify({final: document.getElementById('final').textContent,
  partial: document.getElementById('partial').textContent, lag: document.getElementById('lag').textContent,
  finalColor: style('final'), partialColor: style('partial'), ...relais});
"""


def _snapshot(driver) -> dict:
    return json.loads(driver.execute_script(_SNAPSHOT))


def _content_words(text: str) -> set[str]:
    words = {w.strip(".,;:!?'\"").lower() for w in text.split()}
    return {w for w in CONTENT_WORDS if any(x.startswith(w) for x in words)}


def _save_console(driver, path: Path) -> None:
    try:
        path.write_text("\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser")))
    except Exception as exc:  # noqa: BLE001 - a missing log must not hide the test's own result
        path.write_text(f"no browser log: {exc}")


def test_page_translates_the_fake_microphone_live(web_server, browser_paths, clip, artifacts, tmp_path):
    from selenium.webdriver.common.by import By

    fake_mic = _fake_mic_file(clip, tmp_path)
    driver = _chromium(browser_paths, tmp_path, fake_mic)
    try:
        driver.get(f"http://127.0.0.1:{web_server.server.web_port}/?from=fr&to=en&latency=LOW_LATENCY")
        driver.find_element(By.ID, "start").click()
        started, live = time.monotonic(), None
        while time.monotonic() - started < CAPTION_TIMEOUT_S:
            state = _snapshot(driver)
            if live is None and len(_content_words(state["final"])) >= 2:
                live = state
                driver.save_screenshot(str(artifacts / "web-live.png"))
            if live is not None and state["audioChunks"] > 0:
                break
            if state["error"] or state["closeCode"]:
                break
            time.sleep(0.2)
        _save_console(driver, artifacts / "web-console.log")
        assert live is not None, f"no captions with two of {CONTENT_WORDS} within {CAPTION_TIMEOUT_S:.0f} s: {state}"
        # the captions came while the fake microphone was still playing the clip
        assert live["sentSeconds"] < clip.duration_s, live
        assert state["audioChunks"] > 0 and state["audioSeconds"] > 0.5, state  # translated speech arrived
        assert "behind the speaker" in state["lag"] and state["captionLagS"] is not None
        assert state["finalColor"] != state["partialColor"]  # the uncommitted tail is greyed

        driver.find_element(By.ID, "stop").click()
        deadline = time.monotonic() + 60
        # the summary comes just before the server closes the socket: wait for the close
        while not _snapshot(driver)["closeCode"] and time.monotonic() < deadline:
            time.sleep(0.2)
        done = _snapshot(driver)
        driver.save_screenshot(str(artifacts / "web-done.png"))
        _save_console(driver, artifacts / "web-console.log")
        assert done["summary"] is not None and done["state"].startswith("done"), done
        assert len(_content_words(done["summary"]["translation"])) >= 2
        assert done["closeCode"] == 1000
        assert driver.find_element(By.ID, "vtt").is_displayed()  # the captions as WebVTT

        # the caption overlay: captions only, green background, no controls
        driver.get(f"http://127.0.0.1:{web_server.server.web_port}/?overlay=1&bg=green&from=fr")
        assert not driver.find_element(By.ID, "controls").is_displayed()
        background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(0, 177, 64)"
        driver.save_screenshot(str(artifacts / "web-overlay.png"))
    finally:
        driver.quit()


def test_a_dropped_file_streams_at_real_time(web_server, browser_paths, artifacts, tmp_path):
    """A file given to the page (the drop zone's file input: the same path as a drop) is played
    through the capture graph, so it is sent no faster than real time, and translated whole."""
    from selenium.webdriver.common.by import By

    sample = ROOT / "service" / "relais" / "data" / "samples" / "fr_fleurs_1857.wav"  # 8.3 s
    duration_s = sf.info(sample).duration
    driver = _chromium(browser_paths, tmp_path)
    try:
        driver.get(f"http://127.0.0.1:{web_server.server.web_port}/?from=fr&latency=LOW_LATENCY&speech=0")
        driver.find_element(By.ID, "file").send_keys(str(sample))
        first_sent, pace = None, []
        deadline = time.monotonic() + CAPTION_TIMEOUT_S
        while time.monotonic() < deadline:
            state = _snapshot(driver)
            if state["sentSeconds"] > 0:
                first_sent = first_sent or time.monotonic()
                pace.append((time.monotonic() - first_sent, state["sentSeconds"]))
            if state["closeCode"]:  # the summary comes just before the close
                break
            time.sleep(0.2)
        driver.save_screenshot(str(artifacts / "web-file.png"))
        _save_console(driver, artifacts / "web-file-console.log")
    finally:
        driver.quit()
    assert state["summary"] is not None and state["closeCode"] == 1000, state
    assert state["summary"]["audioInS"] == pytest.approx(duration_s, abs=0.1)
    # The browser resamples the file (48 kHz context), so the audio, and with AlignAtt sometimes the
    # first words, differ slightly from a direct stream: ask for the clip's content words.
    translation = state["summary"]["translation"].lower()
    assert sum(w in translation for w in ("added", "obligations", "development", "responsib", "capa")) >= 3, \
        translation
    assert state["audioChunks"] == 0  # speech=0: text only
    # real time: from its first look, the page never sent audio faster than the wall clock ran
    assert pace and all(sent - pace[0][1] <= elapsed + 0.3 for elapsed, sent in pace), pace
    assert pace[-1][0] >= duration_s - 1.0, pace
