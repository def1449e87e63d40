"""The web page at `/` in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by selenium
against a live `vqtok serve` of the default model with an API key. Skips only where Chromium is absent
(`.ci/run` installs it). Leaves a screenshot in build/test-artifacts/page.png (or $VQTOK_TEST_ARTIFACTS)."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from _serving import PHOTOS, REPO, LiveServer, psnr

KEY = "page-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("VQTOK_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
PHOTO = next(p for p in PHOTOS if p.name == "chelsea.jpg")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("page") / "serve.log"
    with LiveServer(["--model", "vqtok-f8-k1024", "--threads", "1"], api_key=KEY, log=log) as srv:
        yield srv


def test_page_is_served_without_a_key_and_is_self_contained(server):
    r = httpx.get(server.url + "/", timeout=60)  # no key: the page itself holds no data
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "X-API-Key" in html and "sessionStorage" in html
    assert "http://" not in html and "https://" not in html  # no CDN: works offline
    assert httpx.get(server.url + "/v1/models", timeout=60).status_code == 401  # the API still needs the key


def test_encode_input_option_returns_the_preprocessed_image(server):
    from vqtok.tokenizer.preprocess import prepare

    with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as c:
        for policy in ("resize", "native"):
            r = c.post("/v1/encode", files={"image": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")},
                       data={"input": "png", "policy": policy})
            assert r.status_code == 200, r.text
            seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["input_png"]))))
            arr, crop = prepare(PHOTO, policy, 256, 8)
            assert np.array_equal(seen, arr[: crop.height, : crop.width])  # the one preprocessing implementation
        r = c.post("/v1/encode", files={"image": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")},
                   data={"input": "jpeg"})
        assert r.status_code == 400 and "'input' must be one of none, png" in r.json()["error"]["message"]
        assert "input_png" not in c.post("/v1/encode", files={"image": ("a.jpg", PHOTO.read_bytes())}).json()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("Chromium is absent: `apt-get install -y chromium chromium-driver` (as .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the dev extra)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1400", "--hide-scrollbars"):
        opts.add_argument(arg)  # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 300):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def test_page_in_a_real_browser(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(server.url + "/")
    # without a key the model list is refused, and the page says what to do
    _wait(d, lambda d: "401" in _text(d, "error"))
    assert "API key" in _text(d, "error")
    d.find_element("id", "apikey").send_keys(KEY, Keys.TAB)  # change event: kept in the tab, models reload
    _wait(d, lambda d: _text(d, "m-k") == "1024" and _text(d, "error") == "")
    assert d.execute_script("return sessionStorage.getItem('vqtok-api-key')") == KEY
    assert _text(d, "m-factor") == "8" and _text(d, "m-bpp") == "0.15625"
    listing = httpx.get(server.url + "/v1/models", headers=server.headers).json()
    assert _text(d, "m-sha") == listing["models"][0]["codebook_sha256"]

    # upload a photo: input as the model saw it, reconstruction, PSNR equal to the endpoints' replies
    d.find_element("id", "file").send_keys(str(PHOTO))
    _wait(d, lambda d: _text(d, "psnr").endswith("dB"))
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as c:
        files = {"image": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")}
        enc = c.post("/v1/encode", files=files, data={"input": "png"}).json()
        rec = c.post("/v1/reconstruct", files=files).content
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(enc["input_png"]))))
    expected = psnr(seen, np.asarray(Image.open(io.BytesIO(rec)).convert("RGB")))
    assert _text(d, "psnr") == f"{expected:.2f} dB"
    assert float(d.find_element("id", "psnr").get_attribute("data-psnr")) == pytest.approx(expected, abs=1e-9)
    codes = np.array(enc["codes"])
    assert _text(d, "distinct") == str(len(np.unique(codes))) and _text(d, "grid-shape") == "32×32"

    # hover a token: the page names the code under the cursor
    grid = d.find_element("id", "tokens")
    w, h = grid.size["width"], grid.size["height"]
    for i, j in ((3, 5), (20, 27)):
        x, y = (j + 0.5) * w / 32 - w / 2, (i + 0.5) * h / 32 - h / 2  # offsets from the element's centre
        ActionChains(d).move_to_element_with_offset(grid, round(x), round(y)).perform()
        _wait(d, lambda d: _text(d, "hover-code").endswith(f"row {i}, column {j}"), 30)
        assert _text(d, "hover-code") == f"code {codes[i, j]} at row {i}, column {j}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "page.png"))

    # paste codes and decode
    small = codes[:6, :8].tolist()
    box = d.find_element("id", "codes-in")
    box.clear()
    box.send_keys(json.dumps(small))
    d.find_element("id", "decode-btn").click()
    _wait(d, lambda d: d.find_element("id", "decoded").is_displayed() or _text(d, "decode-error"))
    assert _text(d, "decode-error") == ""
    ref = httpx.post(server.url + "/v1/decode", headers=server.headers,
                     json={"codes": small, "format": "json"}).json()
    assert d.find_element("id", "decoded").get_attribute("src") == "data:image/png;base64," + ref["image"]
    assert d.find_element("id", "decoded").get_attribute("data-size") == "64x48"
    box.clear()
    box.send_keys("[[1, 2], [3, 4096]]")  # a code outside [0, K): the server's 422 message is shown
    d.find_element("id", "decode-btn").click()
    _wait(d, lambda d: "422" in _text(d, "decode-error"), 60)

    # a file that is not an image: the server's 415 message is shown
    bad = ARTIFACTS / "not-an-image.png"
    bad.write_bytes(b"this is text, not a PNG")
    d.find_element("id", "file").send_keys(str(bad))
    _wait(d, lambda d: "415" in _text(d, "error"), 60)
    assert "not a decodable image" in _text(d, "error") and "choose a PNG, JPEG" in _text(d, "error")
