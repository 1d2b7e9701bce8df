"""The tgfr serve web app: its JSON endpoints, a bounded load test on loopback, and each tab driven in a
real headless Chromium as a person would use it (skipped where no chromium/chromedriver is installed)."""
import contextlib
import io
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import tgfr  # noqa: E402
from tgfr.inference.serve import create_app, open_gallery, serving  # noqa: E402

UPLOAD_LIMIT = 100_000  # bytes: the synthetic faces are a few kB, a noisy 256-pixel PNG is ~190 kB
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,1000")


@pytest.fixture(scope="module")
def recognizer(tgfr_run):
    return tgfr.load(tgfr_run)


@pytest.fixture(scope="module")
def photos(face_gallery):
    return sorted(face_gallery.glob("person*/*.png"))


@pytest.fixture(scope="module")
def app(recognizer, xmodal_run, face_gallery):
    from tgfr.retrieval import load

    gallery, error = open_gallery(recognizer, face_gallery)
    assert error is None
    return create_app(recognizer, load(xmodal_run, face_gallery), gallery, max_upload_bytes=UPLOAD_LIMIT)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A text file named like a photo, and a real PNG over the upload limit."""
    root = tmp_path_factory.mktemp("bad")
    (root / "notes.png").write_text("this is not a photo")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "huge.png")
    assert (root / "huge.png").stat().st_size > UPLOAD_LIMIT
    return root


def _upload(path: Path):
    return (path.name, path.read_bytes(), "image/png")


def _verify(client, photos, **data):
    files = {"image_a": _upload(photos[0]), "image_b": _upload(photos[1])}
    return client.post("/api/verify", files=files, data=data)


# ---------------------------------------------------------------- the JSON endpoints

def test_verify_answers_score_decision_and_attention(client, recognizer, photos):
    captions = {"caption_a": "A young woman with long black hair.", "caption_b": "She wears earrings."}
    response = _verify(client, photos, **captions)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = recognizer.verify(photos[0], photos[1], captions["caption_a"], captions["caption_b"])
    assert body["mode"] == "tgfr" and body["score"] == pytest.approx(expected.score, abs=1e-4)
    assert (body["threshold"], body["same"]) == (expected.threshold, expected.same)
    assert [view["photo"] for view in body["attention"]] == ["A", "B"]
    words, _, _ = recognizer.attention(photos[0], captions["caption_a"])
    assert [w["word"] for w in body["attention"][0]["words"]] == words
    assert all(w["image"].startswith("data:image/png;base64,") for w in body["attention"][0]["words"])
    image_only = _verify(client, photos).json()
    assert image_only["mode"] == "image" and image_only["attention"] == []


def test_identify_and_search_answer_ranked_faces(client, photos, face_gallery):
    probe = photos[3]
    with probe.open("rb") as file:
        body = client.post("/api/identify", files={"probe": ("probe.png", file, "image/png")},
                           data={"top_k": "3"}).json()
    assert body["mode"] == "image" and [m["rank"] for m in body["matches"]] == [1, 2, 3]
    assert body["matches"][0]["name"] == probe.relative_to(face_gallery).as_posix()
    search = client.post("/api/search", data={"text": "A young man with short black hair.", "top_k": "4"}).json()
    assert search["composed"] is False and len(search["matches"]) == 4
    composed = client.post("/api/search", data={"text": "now wears glasses", "top_k": "2"},
                           files={"image": _upload(probe)}).json()
    assert composed["composed"] is True and len(composed["matches"]) == 2


@pytest.mark.parametrize("endpoint, files, data, status, message", [
    ("/api/verify", {"image_a": "notes.png", "image_b": "photo"}, {}, 400,
     "Photo A: notes.png is not a readable image file"),
    ("/api/verify", {"image_a": "photo", "image_b": "huge.png"}, {}, 413, "over the upload limit"),
    ("/api/verify", {"image_a": "photo"}, {}, 400, "Photo B: choose a photo"),
    ("/api/verify", {"image_a": "photo", "image_b": "photo"}, {"caption_a": "a man", "caption_b": "  "}, 400,
     "describe both photos, or neither"),
    ("/api/verify", {"image_a": "photo", "image_b": "photo"}, {"mode": "cgfr"}, 400, "one of this model's modes"),
    ("/api/identify", {"probe": "photo"}, {"top_k": "1000"}, 400, "larger than the gallery"),
    ("/api/identify", {"probe": "photo"}, {"top_k": "many"}, 400, "top_k"),
    ("/api/search", {}, {"text": "   "}, 400, "describe the person"),
    ("/api/search", {"image": "notes.png"}, {"text": "now has a beard"}, 400, "not a readable image file"),
])
def test_mistakes_are_messages_and_the_server_goes_on(client, photos, bad_files, endpoint, files, data, status,
                                                      message):
    uploads = {field: _upload(photos[0] if name == "photo" else bad_files / name) for field, name in files.items()}
    response = client.post(endpoint, files=uploads, data=data)
    assert response.status_code == status and message in response.json()["error"]
    assert _verify(client, photos).status_code == 200


def test_a_request_far_over_the_limit_is_refused_before_it_is_read(client):
    response = client.post("/api/verify", content=b"x" * (3 * UPLOAD_LIMIT),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "over the limit" in response.json()["error"]


def test_missing_parts_are_named(recognizer, tmp_path):
    (tmp_path / "empty").mkdir()
    gallery, error = open_gallery(recognizer, tmp_path / "empty")
    assert gallery is None and "holds no images" in error
    bare = TestClient(create_app(recognizer, None, None, error))
    assert bare.get("/api/info").json()["gallery_error"] == error
    photo = {"probe": ("p.png", b"", "image/png")}
    assert bare.post("/api/identify", files=photo).json()["error"] == error
    assert "--xmodal" in bare.post("/api/search", data={"text": "a man"}).json()["error"]
    assert "--model" in TestClient(create_app()).post("/api/verify").json()["error"]


# ---------------------------------------------------------------- a real server on loopback

def test_concurrent_requests_all_answer(app, photos):
    """A bounded burst: 24 verifications from 8 clients at once against loopback, all answered alike."""
    files = {"image_a": photos[0].read_bytes(), "image_b": photos[1].read_bytes()}

    def one(_):
        with httpx.Client(timeout=120) as session:
            return session.post(f"{url}/api/verify", files={k: (f"{k}.png", v) for k, v in files.items()},
                                data={"caption_a": "a woman", "caption_b": "a woman with earrings"})

    with serving(app) as url, ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(one, range(24)))
    assert [r.status_code for r in responses] == [200] * 24
    assert len({r.json()["score"] for r in responses}) == 1


# ---------------------------------------------------------------- in the browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"the browser test needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): "
                    f"apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tgfr_run, xmodal_run, face_gallery):
    """``tgfr serve`` as a user starts it (any free port); yields its URL."""
    command = [sys.executable, "-m", "tgfr.cli", "serve", "--model", str(tgfr_run), "--xmodal", str(xmodal_run),
               "--gallery", str(face_gallery), "--port", "0", "--max-upload-mb", str(UPLOAD_LIMIT / 2**20)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen, url = [], None
    deadline = time.monotonic() + 300
    while url is None and time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=1))
            if seen[-1].startswith("tgfr serve: http://"):
                url = seen[-1].split()[2].rstrip("/")
    try:
        assert url is not None, f"tgfr serve did not start: {''.join(seen)}"
        assert url.startswith("http://127.0.0.1:")  # bound to this computer only
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    """Into $TGFR_SCREENSHOTS (docs/ when refreshing the README's pictures), else the test's folder."""
    folder = Path(os.environ.get("TGFR_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(folder / name))


def _wait_for(driver, panel: str) -> str:
    """Waits until ``panel`` shows a result or an error; returns "result" or the error's text."""
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(d):
        if d.find_element("id", f"{panel}-error").is_displayed():
            return d.find_element("id", f"{panel}-error").text
        return "result" if d.find_element("id", f"{panel}-result").is_displayed() else False

    WebDriverWait(driver, 120).until(lambda d: not d.find_element("id", f"{panel}-submit").get_attribute("disabled")
                                     and settled(d))
    return settled(driver)


def _fill(driver, element_id: str, value) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    if value:
        field.send_keys(str(value.resolve() if isinstance(value, Path) else value))  # file inputs want absolute paths


def _submit(driver, panel: str) -> str:
    driver.execute_script(f"document.getElementById('{panel}-result').hidden = true;"
                          f"document.getElementById('{panel}-error').hidden = true;")
    driver.find_element("id", f"{panel}-submit").click()
    return _wait_for(driver, panel)


def _open(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready"))


def test_each_tab_in_a_browser(browser, served, photos, face_gallery, bad_files, tmp_path):
    driver = browser
    _open(driver, served)
    assert "gallery: 48 faces, described" in driver.find_element("id", "status").text

    # Verify: two photos with a witness's descriptions -> score, decision, each word's attention
    _fill(driver, "verify-image-a", photos[0])
    _fill(driver, "verify-image-b", photos[1])
    _fill(driver, "verify-caption-a", "A young woman with long black hair and arched eyebrows.")
    _fill(driver, "verify-caption-b", "She has black hair and wears earrings.")
    assert _submit(driver, "verify") == "result"
    assert "score" in driver.find_element("id", "verify-score").text
    assert "mode tgfr" in driver.find_element("id", "verify-score").text
    decision = driver.find_element("id", "verify-decision").text
    assert decision in ("Same person", "Different people") or decision.startswith("no decision")
    words = driver.find_elements("css selector", "#attention-A figure")
    assert [w.text for w in words][:3] == ["a", "young", "woman"]
    _screenshot(driver, "serve_verify.png", tmp_path)

    # a file that is not a photo, then one over the upload limit: messages in the page, and it goes on
    _fill(driver, "verify-image-a", bad_files / "notes.png")
    assert "notes.png is not a readable image file" in _submit(driver, "verify")
    _fill(driver, "verify-image-a", bad_files / "huge.png")
    assert "over the upload limit" in _submit(driver, "verify")
    _fill(driver, "verify-image-a", photos[2])
    assert _submit(driver, "verify") == "result"

    # Identify: a probe photo and its description -> the top 3 of the gallery, led by its own score of 1
    driver.find_element("id", "tab-identify").click()
    probe = photos[5]
    caption = next(line for line in (face_gallery / "captions.jsonl").read_text().splitlines()
                   if probe.relative_to(face_gallery).as_posix() in line).split('"caption": ')[1].strip('"}')
    _fill(driver, "identify-probe", probe)
    _fill(driver, "identify-caption", caption)
    _fill(driver, "identify-top-k", 3)
    assert _submit(driver, "identify") == "result"
    matches = driver.find_elements("css selector", "#identify-result figure.match")
    scores = [float(match.find_element("css selector", ".score").text) for match in matches]
    assert len(matches) == 3 and scores[0] == 1.0 and scores == sorted(scores, reverse=True)
    _screenshot(driver, "serve_identify.png", tmp_path)

    # Search: an empty description is refused; a description, then a photo plus a change, give a grid
    driver.find_element("id", "tab-search").click()
    _fill(driver, "search-text", "")
    assert "describe the person" in _submit(driver, "search")
    _fill(driver, "search-text", "now wears glasses and has a beard")
    _fill(driver, "search-image", photos[8])
    _fill(driver, "search-top-k", 6)
    assert _submit(driver, "search") == "result"
    assert "photo + change description" in driver.find_element("id", "search-result").text
    driver.execute_script("document.getElementById('search-image').value = '';")
    _fill(driver, "search-text", "A young man with short black hair and a beard.")
    assert _submit(driver, "search") == "result"
    assert len(driver.find_elements("css selector", "#search-result figure.match")) == 6
    _screenshot(driver, "serve_search.png", tmp_path)


def test_a_gallery_without_faces_is_a_message_in_the_page(browser, recognizer, photos, tmp_path):
    (tmp_path / "empty").mkdir()
    gallery, error = open_gallery(recognizer, tmp_path / "empty")
    with serving(create_app(recognizer, None, gallery, error)) as url:
        _open(browser, url)
        browser.find_element("id", "tab-identify").click()
        shown = browser.find_element("id", "identify-error")
        assert shown.is_displayed() and "holds no images" in shown.text
        _fill(browser, "identify-probe", photos[0])
        assert "holds no images" in _submit(browser, "identify")
        browser.find_element("id", "tab-verify").click()  # the rest of the app still works
        _fill(browser, "verify-image-a", photos[0])
        _fill(browser, "verify-image-b", photos[1])
        _fill(browser, "verify-caption-a", "")
        _fill(browser, "verify-caption-b", "")
        assert _submit(browser, "verify") == "result"
    shutil.rmtree(tmp_path / "empty")


def test_the_page_needs_nothing_from_the_network(client):
    """Offline: every asset the page loads is served by the app itself."""
    page = client.get("/").text
    assert "http://" not in page and "https://" not in page
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and "https://" not in response.text
    assert io.BytesIO(client.get("/").content).read(15) == b"<!doctype html>"
