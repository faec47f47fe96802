"""The web UI in a real browser: headless Chromium (Debian's chromium + chromedriver, driven by
Selenium; nothing is downloaded) against a real `python -m easel serve` with an API key, on a
free loopback port, with the tiny models and a tiny LoRA. The tests run in order on one page, as a
user would: generate, img2img from a result, inpainting it, a ControlNet unit, a LoRA, cancel,
gallery, PNG info. The browser adds 300 ms to every request (as a server across a network does),
so a test that reads the page before it has settled fails here, not only on a slow machine.

On failure each test leaves a screenshot, the page's HTML and the browser console in
$EASEL_TEST_ARTIFACTS (default: the test's pytest tmp dir) and prints where.
"""

from __future__ import annotations

import base64
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_CANNY, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER
from server_support import serve_process

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "ui-browser-key"
PROMPT = "a red circle"
LORA = "tiny-style"
XL_LORA = "xl-stub"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver); "
        ".ci/run installs them",
    ),
]


@pytest.fixture(scope="module")
def base_url(hf_home, controlnet_models, tmp_path_factory):
    """`easel serve` in a subprocess with an API key; its URL. Its LoRA folder has a tiny LoRA for
    the tiny SD 1.5 model and a stub that reads as made for SDXL (one 2048-wide cross-attention
    key matrix: listed, never loaded here)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from easel.testing.tiny_loras import write_tiny_lora

    home = tmp_path_factory.mktemp("ui-home")
    pipe = StableDiffusionPipeline.from_pretrained(TINY_SD15)
    write_tiny_lora(pipe, home / "loras" / f"{LORA}.safetensors", layout="peft", seed=1)
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
    save_file({key: torch.zeros(1, 2048)}, str(home / "loras" / f"{XL_LORA}.safetensors"))
    with serve_process(home, KEY) as port:
        yield f"http://127.0.0.1:{port}"


def send_key(driver: Any, key: str | None) -> None:
    """What a signed-in browser sends with every request of the page (fetch, EventSource, <img>)."""
    basic = "Basic " + base64.b64encode(f"me:{key}".encode()).decode()
    headers = {} if key is None else {"Authorization": basic}
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,1000",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.execute_cdp_cmd("Network.enable", {})
    # every request takes 300 ms more, as from a server across a network: a test that reads the page
    # before the page has finished (a stale status, a tab switched late) fails here every time, not
    # only on a slow CI machine
    conditions = {"offline": False, "latency": 300, "downloadThroughput": -1, "uploadThroughput": -1}
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", conditions)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(driver, base_url, request, tmp_path):
    """The driver, signed in; on failure, artifacts are saved (see the module docstring)."""
    send_key(driver, KEY)
    failed_before = request.session.testsfailed
    yield driver
    if request.session.testsfailed > failed_before:
        folder = Path(os.environ.get("EASEL_TEST_ARTIFACTS") or tmp_path) / request.node.name
        folder.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(folder / "screenshot.png"))
        (folder / "page.html").write_text(driver.page_source)
        console = "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser"))
        (folder / "console.txt").write_text(console)
        print(f"\nUI artifacts: {folder}")


def snapshot(driver: Any, name: str) -> None:
    """With EASEL_UI_SCREENSHOTS=DIR, keep a screenshot of this moment (to look at the UI)."""
    folder = os.environ.get("EASEL_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def open_ui(driver: Any, base_url: str) -> None:
    """Open the web UI signed in with KEY and wait until its script is ready (body data-ready: the
    models listed): how the browser tests here and in test_edit_browser, test_ui_upscale,
    test_styles_browser and test_ui_hires start."""
    send_key(driver, KEY)
    driver.get(base_url + "/")
    wait(driver, lambda: driver.find_element("tag name", "body").get_attribute("data-ready") == "true")


def wait(driver: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # a list re-rendered between finding and reading its elements (or read while it is being
    # replaced: no card yet) is just "not yet"
    stale = (StaleElementReferenceException, IndexError)
    waiting = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=stale)
    return waiting.until(lambda d: condition())


def by_id(driver: Any, element_id: str) -> Any:
    return driver.find_element("id", element_id)


def fill(driver: Any, element_id: str, value: object) -> None:
    element = by_id(driver, element_id)
    element.clear()
    element.send_keys(str(value))


def choose(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, element_id)).select_by_value(value)


def upload(driver: Any, element_id: str, path: Path) -> None:
    element = by_id(driver, element_id)
    driver.execute_script("arguments[0].hidden = false", element)
    element.send_keys(str(path))


def results(driver: Any, selector: str = "#results .result") -> list[Any]:
    """Result cards whose image has loaded."""
    cards = driver.find_elements("css selector", selector)
    loaded = [c for c in cards if driver.execute_script(
        "const i = arguments[0].querySelector('img'); return i.complete && i.naturalWidth", c)]  # fmt: skip
    return loaded if len(loaded) == len(cards) else []


def generate_and_wait(driver: Any, count: int, timeout: float = 60) -> list[Any]:
    old = by_id(driver, "results").get_attribute("innerHTML")
    by_id(driver, "generate").click()

    def done() -> bool:
        # the click sets data-state to "submitting" at once, so these are this job's, not the last one's
        if by_id(driver, "status").get_attribute("data-state") in ("refused", "failed", "cancelled"):
            return True
        return by_id(driver, "results").get_attribute("innerHTML") != old and len(results(driver)) == count

    wait(driver, done, timeout)
    assert by_id(driver, "error").text == "", by_id(driver, "error").text
    return results(driver)


def test_api_key_is_required(driver, base_url):
    send_key(driver, None)
    driver.get(base_url + "/")  # 401 with a Basic challenge: no page (a browser asks to sign in)
    assert not driver.find_elements("id", "prompt")
    driver.get(base_url + "/health")  # the one open route: a document of this origin to fetch from
    # credentials "omit": the answer itself, not the browser's sign-in dialog (headless has none)
    status = "return fetch(arguments[0], {credentials: 'omit'}).then(r => r.status)"
    for path in ("/", "/ui/app.js", "/api/v1/models", "/api/v1/gallery"):
        assert driver.execute_script(status, path) == 401, path
    send_key(driver, "wrong")
    assert driver.execute_script(status, "/api/v1/models") == 401
    send_key(driver, KEY)
    assert driver.execute_script(status, "/api/v1/models") == 200


def test_generate_shows_images_and_token_counts(page, base_url):
    open_ui(page, base_url)
    # before the first image: what will appear there, and the server's current model selected
    assert "Your images appear here" in by_id(page, "results-placeholder").text
    assert by_id(page, "model").get_attribute("value") == "easel-demo"
    choose(page, "model", TINY_SD15)
    wait(page, lambda: "sd15" in by_id(page, "model-family").text)
    assert by_id(page, "refiner-fields").is_displayed() is False
    assert by_id(page, "prior-fields").is_displayed() is False
    fill(page, "prompt", PROMPT)
    wait(page, lambda: by_id(page, "prompt-tokens").text.endswith("/75, 1 chunk"))
    fill(page, "prompt", PROMPT + ", red circle" * 30)
    wait(page, lambda: by_id(page, "prompt-tokens").text.endswith("/150, 2 chunks"))
    fill(page, "prompt", PROMPT)
    for element_id, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 42), ("num-images", 2)):
        fill(page, element_id, value)
    choose(page, "scheduler", "Euler a")
    fill(page, "clip-skip", 2)
    record_sent_jobs(page)

    cards = generate_and_wait(page, 2)
    assert by_id(page, "status").text.startswith("Done: 2 images")
    snapshot(page, "1-generate")
    sizes = [page.execute_script("const i = arguments[0].querySelector('img'); return [i.naturalWidth, "
                                 "i.naturalHeight]", card) for card in cards]  # fmt: skip
    assert sizes == [[64, 64], [64, 64]]
    parameters = [c.find_element("css selector", ".metadata pre").get_attribute("textContent") for c in cards]
    assert "Seed: 42," in parameters[0] and "Seed: 43," in parameters[1]
    assert "Sampler: Euler a" in parameters[0]
    assert page.execute_script("return window.sentJobs")[-1]["clip_skip"] == 2
    assert "Clip skip: 2" in parameters[0]
    assert cards[0].find_element("css selector", "a.download").get_attribute("download").endswith(".png")

    # seed buttons and "reuse settings"
    by_id(page, "seed-random").click()
    assert by_id(page, "seed").get_attribute("value") == "-1"
    by_id(page, "seed-reuse").click()
    assert by_id(page, "seed").get_attribute("value") == "42"
    fill(page, "prompt", "something else")
    cards[1].find_element("css selector", ".reuse-settings").click()
    wait(page, lambda: by_id(page, "prompt").get_attribute("value") == PROMPT)
    assert by_id(page, "seed").get_attribute("value") == "43"
    assert by_id(page, "clip-skip").get_attribute("value") == "2"

    # "same settings, new seed": the same request (2 images) again with a random seed
    cards[0].find_element("css selector", ".new-seed").click()
    wait(page, lambda: by_id(page, "status").get_attribute("data-state") == "succeeded"
         and "Seed: 42," not in results(page)[0].find_element("css selector", ".metadata pre")
         .get_attribute("textContent"))  # fmt: skip
    assert by_id(page, "prompt").get_attribute("value") == PROMPT and len(results(page)) == 2
    by_id(page, "clip-skip").clear()  # later tests: no clip skip

    # family-only fields appear for the families that take them
    choose(page, "model", TINY_SDXL)
    wait(page, lambda: by_id(page, "refiner-fields").is_displayed())
    assert not by_id(page, "prior-fields").is_displayed()
    choose(page, "model", TINY_SD15)
    wait(page, lambda: not by_id(page, "refiner-fields").is_displayed())

    # a validation error is shown in place, naming the field
    fill(page, "width", 65)
    by_id(page, "generate").click()
    wait(page, lambda: "width" in by_id(page, "error").text)
    assert by_id(page, "status").get_attribute("data-state") == "refused"  # no job: the last one's state gone
    assert "invalid" in by_id(page, "width").get_attribute("class")
    # where the eye is: at the top of the form and under the field, which is scrolled into view
    assert "width" in by_id(page, "error-top").text and by_id(page, "error-top").is_displayed()
    note = page.find_element("css selector", ".field-error")
    assert "width" in note.text and note.is_displayed()
    assert page.execute_script(
        "const box = arguments[0].getBoundingClientRect(); return box.top >= 0 && box.bottom <= innerHeight;",
        by_id(page, "width"),
    )
    fill(page, "width", 64)


def test_img2img_from_a_result(page, init_png):
    first = results(page)[0]
    first.find_element("css selector", ".send-img2img").click()
    wait(page, lambda: by_id(page, "init-preview").is_displayed())
    fill(page, "prompt", "paint it")
    fill(page, "strength", 0.5)
    fill(page, "steps", 4)
    assert by_id(page, "effective-steps").text == "0.5 x 4 = 2 steps"
    fill(page, "num-images", 1)
    cards = generate_and_wait(page, 1)
    assert "Denoising strength: 0.5" in cards[0].find_element("css selector", ".metadata pre").get_attribute(
        "textContent"
    )
    by_id(page, "init-clear").click()
    assert not by_id(page, "init-preview").is_displayed()

    # dropping a file on the zone sets the init image too
    page.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[1]), c => c.charCodeAt(0));"
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "arguments[0].dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));",
        by_id(page, "init-drop"),
        base64.b64encode(init_png.read_bytes()).decode(),
    )
    wait(page, lambda: by_id(page, "init-preview").get_attribute("src").startswith("data:image/png"))
    assert by_id(page, "effective-steps").text == "0.5 x 4 = 2 steps"
    by_id(page, "init-clear").click()


def image_pixels(base_url: str, image_id: str) -> Any:
    """An image of the gallery as an RGB array, read with the key as another client."""
    import io

    import numpy as np
    from PIL import Image

    request = urllib.request.Request(base_url + f"/api/v1/images/{image_id}",
                                     headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        return np.asarray(Image.open(io.BytesIO(answer.read())).convert("RGB")).astype(int)


def paint(driver: Any, canvas: Any, points: list[tuple[float, float]]) -> None:
    """One stroke with the mouse (pointer down, moves, up) through `points`, given as fractions
    of the canvas's width and height."""
    import itertools

    from selenium.webdriver.common.action_chains import ActionChains

    width, height = canvas.rect["width"], canvas.rect["height"]
    # offsets from the element's centre (W3C actions)
    at = [(round((x - 0.5) * width), round((y - 0.5) * height)) for x, y in points]
    actions = ActionChains(driver).move_to_element_with_offset(canvas, *at[0]).click_and_hold()
    for (x0, y0), (x1, y1) in itertools.pairwise(at):
        actions.move_by_offset(x1 - x0, y1 - y0)
    actions.release().perform()


def test_inpaint_a_result_with_a_painted_mask(page, base_url):
    import io

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.keys import Keys

    source = results(page)[0]  # the img2img result, 64x64
    source_id = source.get_attribute("data-image-id")
    source.find_element("css selector", ".send-inpaint").click()
    canvas = by_id(page, "mask-canvas")
    wait(page, lambda: canvas.get_attribute("width") == "64" and canvas.is_displayed())
    assert canvas.get_attribute("height") == "64"
    assert page.switch_to.active_element == canvas  # "Send to inpaint" leaves the mask editor in focus
    assert by_id(page, "mask-editor").get_attribute("data-mask") == "empty"
    assert not by_id(page, "inpaint-options").is_displayed() and not by_id(page, "mask-clear").is_enabled()

    # the biggest brush, one stroke down the left part: columns ~3-29 of 64 on screen scale
    by_id(page, "mask-size").send_keys(Keys.END)
    assert by_id(page, "mask-size-value").text == "128 px"
    scale = 64 / canvas.rect["width"]
    brush = 128 * scale  # in image pixels
    paint(page, canvas, [(0.25, 0.05), (0.25, 0.5), (0.25, 0.95)])
    wait(page, lambda: by_id(page, "mask-editor").get_attribute("data-mask") == "painted")
    assert by_id(page, "inpaint-options").is_displayed()
    assert by_id(page, "mask-blur").get_attribute("value") == "4"
    assert by_id(page, "paste-back").is_selected()
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", by_id(page, "mask-tools"))
    snapshot(page, "6-inpaint-mask")

    # what the page sends, as it sends it
    page.execute_script(
        "window.sentJobs = []; const original = window.fetch;"
        "window.fetch = (url, init) => { if (String(url).endsWith('/api/v1/jobs') && init.body)"
        " window.sentJobs.push(JSON.parse(init.body)); return original(url, init); };"
    )
    fill(page, "prompt", "inpaint a patch")
    fill(page, "strength", 0.75)
    cards = generate_and_wait(page, 1)
    parameters = cards[0].find_element("css selector", ".metadata pre").get_attribute("textContent")
    assert "Mask blur: 4" in parameters
    sent = page.execute_script("return window.sentJobs")[-1]
    assert sent["init_image"].startswith("data:image/png") and sent["mask_image"].startswith("data:image/png")
    assert sent["mask_blur"] == 4 and sent["paste_back"] is True and "outpaint" not in sent
    png = base64.b64decode(sent["mask_image"].split(",", 1)[1])
    mask = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    assert mask.shape == (64, 64, 4) and (mask[..., 3] == 255).all()  # opaque, the init image's size
    edge = int(16 + brush / 2) + 1  # the first column the brush did not reach
    assert (mask[..., :3] == 255).all(axis=2)[8:56, 8:24].all()  # white where painted
    assert (mask[..., :3] == 0).all(axis=2)[:, edge:].all()  # black elsewhere
    jobs = call_api(base_url, "/api/v1/jobs?limit=5")
    result_id = cards[0].get_attribute("data-image-id")
    job = next(j for j in jobs if any(image["id"] == result_id for image in j["images"]))
    assert job["request"]["mask_image"] and job["request"]["inpaint_area"] == "whole"

    init, result = image_pixels(base_url, source_id), image_pixels(base_url, result_id)
    assert init.shape == result.shape == (64, 64, 3)
    outside = edge + 3 * 4 + 1  # beyond the brush and the blur's reach (sigma 4, kernel 21)
    assert outside < 60
    assert (result[:, outside:] == init[:, outside:]).all()  # kept exactly (paste_back)
    assert (np.abs(result[:, 8:24] - init[:, 8:24]).sum(axis=2) > 0).mean() > 0.5  # repainted

    # "reuse settings" restores the mask and the inpainting fields
    choose(page, "inpaint-area", "masked")
    by_id(page, "mask-clear").click()
    cards[0].find_element("css selector", ".reuse-settings").click()
    wait(page, lambda: by_id(page, "mask-editor").get_attribute("data-mask") == "painted")
    assert by_id(page, "inpaint-area").get_attribute("value") == "whole"
    alpha = "return arguments[0].getContext('2d').getImageData(arguments[1], 32, 1, 1).data[3]"
    assert page.execute_script(alpha, canvas, 16) == 255 and page.execute_script(alpha, canvas, 50) == 0

    # the mask tools
    by_id(page, "mask-clear").click()
    assert by_id(page, "mask-editor").get_attribute("data-mask") == "empty"
    assert not by_id(page, "inpaint-options").is_displayed()
    by_id(page, "mask-invert").click()  # nothing painted, inverted: everything
    assert by_id(page, "mask-editor").get_attribute("data-mask") == "painted"
    page.find_element("css selector", "label:has(#mask-eraser)").click()
    paint(page, canvas, [(0.5, 0.5)])
    assert by_id(page, "mask-editor").get_attribute("data-mask") == "painted"
    assert page.execute_script(alpha, canvas, 32) == 0  # erased
    page.find_element("css selector", "label:has(#mask-brush)").click()
    by_id(page, "mask-clear").click()
    fill(page, "outpaint-right", 16)  # outpaint alone makes it inpainting too
    wait(page, lambda: by_id(page, "inpaint-options").is_displayed())
    assert "extended image" in by_id(page, "outpaint-size").text
    fill(page, "outpaint-right", 0)
    wait(page, lambda: not by_id(page, "inpaint-options").is_displayed())

    # a new (or no) init image clears the mask
    paint(page, canvas, [(0.5, 0.2), (0.5, 0.8)])
    assert by_id(page, "mask-editor").get_attribute("data-mask") == "painted"
    by_id(page, "init-clear").click()
    assert not by_id(page, "mask-editor").is_displayed() and not by_id(page, "inpaint-fields").is_displayed()
    assert canvas.get_attribute("width") == "0"


def test_one_controlnet_unit(page, init_png):
    by_id(page, "control-add").click()
    choose(page, "control-0-model", TINY_CANNY)
    assert by_id(page, "control-0-preprocessor").get_attribute("value") == "canny"
    upload(page, "control-0-file", init_png)
    wait(page, lambda: by_id(page, "control-0-preview").is_displayed())
    assert by_id(page, "control-0-preview").get_attribute("src").startswith("data:image/png")
    fill(page, "control-0-scale", 0.7)
    snapshot(page, "2-controlnet-unit")
    fill(page, "prompt", "edges")
    fill(page, "steps", 2)
    # a union mode is sent, and refused at the unit for a ControlNet that is not a union model
    choose(page, "control-0-mode", "depth")
    by_id(page, "generate").click()
    wait(page, lambda: "controls[0].mode" in by_id(page, "error").text)
    assert "invalid" in by_id(page, "control-0-mode").get_attribute("class")
    assert "not a union ControlNet" in page.find_element("css selector", ".control-unit .field-error").text
    assert by_id(page, "status").get_attribute("data-state") == "failed"  # refused where the unit loads
    choose(page, "control-0-mode", "")
    # the next click replaces that "failed" at once ("submitting"), so waiting cannot read the last job's end
    cards = generate_and_wait(page, 1)
    text = cards[0].find_element("css selector", ".metadata pre").get_attribute("textContent")
    assert "ControlNet 0:" in text and "Weight: 0.7" in text
    by_id(page, "control-0-remove").click()
    assert not page.find_elements("css selector", ".control-unit")


def call_api(base_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The native API with the key, as another client of the same server."""
    import json

    request = urllib.request.Request(
        base_url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def record_sent_jobs(driver: Any) -> None:
    """From now on window.sentJobs holds each request body the page posts to /api/v1/jobs."""
    driver.execute_script(
        "if (window.sentJobs) return; window.sentJobs = []; const original = window.fetch;"
        "window.fetch = (url, init) => { if (String(url).endsWith('/api/v1/jobs') && init && init.body)"
        " window.sentJobs.push(JSON.parse(init.body)); return original(url, init); };"
    )


def test_a_lora_from_the_servers_folder(page, base_url):
    choose(page, "model", TINY_SD15)
    wait(page, lambda: "sd15" in by_id(page, "model-family").text)
    assert by_id(page, "loras").is_enabled() and not by_id(page, "lora-unavailable").is_displayed()
    assert not by_id(page, "lora-empty").is_displayed()
    option = by_id(page, "lora-select").find_element("css selector", f"option[value='{LORA}']")
    xl_option = by_id(page, "lora-select").find_element("css selector", f"option[value='{XL_LORA}']")
    # the tiny model's text width (32) is no known family's: shown, not judged (the server checks)
    assert option.text == f"{LORA} (cross-attention 32)"
    # one made for another family is marked, here and in its row
    assert xl_option.text == f"{XL_LORA} (made for sdxl, not for this sd15 model)"
    assert "mismatch" in xl_option.get_attribute("class")
    choose(page, "lora-select", XL_LORA)
    by_id(page, "lora-add").click()
    xl_row = page.find_element("css selector", "#lora-rows .lora-row").get_attribute("id")
    assert "not for this sd15 model" in by_id(page, f"{xl_row}-note").text
    choose(page, "model", TINY_SDXL)
    wait(page, lambda: xl_option.text == f"{XL_LORA} (sdxl)")
    assert by_id(page, f"{xl_row}-note").text == ""
    choose(page, "model", TINY_SD15)
    wait(page, lambda: "not for this sd15 model" in xl_option.text)
    by_id(page, f"{xl_row}-remove").click()

    choose(page, "lora-select", LORA)
    by_id(page, "lora-add").click()
    row = page.find_element("css selector", "#lora-rows .lora-row")
    row_id = row.get_attribute("id")
    weight = by_id(page, f"{row_id}-weight")
    assert by_id(page, f"{row_id}-name").text == LORA and weight.get_attribute("value") == "1"
    assert [weight.get_attribute(a) for a in ("min", "max", "step")] == ["-2", "2", "0.05"]
    by_id(page, "lora-add").click()  # the same LoRA twice: one row, and a word why
    assert len(page.find_elements("css selector", "#lora-rows .lora-row")) == 1
    assert "already" in by_id(page, "lora-message").text

    record_sent_jobs(page)
    for element_id, value in (("prompt", "a pattern"), ("steps", 3), ("seed", 7), ("num-images", 1),
                              ("width", 64), ("height", 64)):  # fmt: skip
        fill(page, element_id, value)
    # the server's error on loras[0].weight is shown on that row's weight
    fill(page, f"{row_id}-weight", 3)
    by_id(page, "generate").click()
    wait(page, lambda: "loras[0].weight" in by_id(page, "error").text)
    assert "invalid" in weight.get_attribute("class")
    fill(page, f"{row_id}-weight", 0.8)
    with_lora = generate_and_wait(page, 1)[0]
    image_id = with_lora.get_attribute("data-image-id")
    assert page.execute_script("return window.sentJobs")[-1]["loras"] == [{"name": LORA, "weight": 0.8}]
    parameters = with_lora.find_element("css selector", ".metadata pre").get_attribute("textContent")
    assert f'Lora hashes: "{LORA}: ' in parameters and f"<lora:{LORA}:0.8>" in parameters
    snapshot(page, "7-lora")

    by_id(page, f"{row_id}-remove").click()
    assert not page.find_elements("css selector", "#lora-rows .lora-row")
    without = generate_and_wait(page, 1)[0]
    assert "loras" not in page.execute_script("return window.sentJobs")[-1]
    assert "Lora hashes" not in without.find_element("css selector", ".metadata pre").get_attribute(
        "textContent"
    )
    changed = image_pixels(base_url, image_id)
    plain = image_pixels(base_url, without.get_attribute("data-image-id"))
    assert changed.shape == plain.shape == (64, 64, 3) and (changed != plain).any()

    # "reuse settings" on the LoRA image (its gallery card: the stored request, with the file's
    # sha256) brings its row back, weight and all
    entry = next(e for e in call_api(base_url, "/api/v1/gallery?limit=5") if e["id"] == image_id)
    assert entry["request"]["loras"][0]["weight"] == 0.8 and len(entry["request"]["loras"][0]["sha256"]) == 64
    by_id(page, "tab-gallery").click()
    selector = f"#gallery-grid [data-image-id='{image_id}'] .reuse-settings"
    wait(page, lambda: page.find_elements("css selector", selector))
    page.find_element("css selector", selector).click()
    wait(page, lambda: by_id(page, "panel-generate").is_displayed()
         and len(page.find_elements("css selector", "#lora-rows .lora-row")) == 1)  # fmt: skip
    restored = page.find_element("css selector", "#lora-rows .lora-row").get_attribute("id")
    assert by_id(page, f"{restored}-name").text == LORA
    assert by_id(page, f"{restored}-weight").get_attribute("value") == "0.8"
    assert by_id(page, "prompt").get_attribute("value") == "a pattern"
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", by_id(page, "loras"))
    snapshot(page, "8-lora-reused")

    # AUTOMATIC1111 syntax: "Insert tag" writes the tag at the cursor
    assert not by_id(page, "lora-insert").is_displayed()
    choose(page, "syntax", "a1111")
    page.execute_script("arguments[0].setSelectionRange(1, 1)", by_id(page, "prompt"))  # after "a"
    by_id(page, "lora-insert").click()
    assert by_id(page, "prompt").get_attribute("value") == f"a <lora:{LORA}:1> pattern"
    choose(page, "syntax", "compel")
    fill(page, "prompt", "a pattern")

    # a family without LoRAs (the SDXL refiner): the fieldset is off and says so (its rows stay,
    # greyed out, and are not sent)
    choose(page, "model", TINY_SDXL_REFINER)
    wait(page, lambda: by_id(page, "lora-unavailable").is_displayed())
    assert by_id(page, "loras").get_property("disabled") is True
    assert not by_id(page, "lora-add").is_enabled() and not by_id(page, f"{restored}-weight").is_enabled()
    choose(page, "model", TINY_SD15)
    wait(page, lambda: by_id(page, "lora-add").is_enabled())
    assert not by_id(page, "lora-unavailable").is_displayed()
    by_id(page, f"{restored}-remove").click()
    assert not page.find_elements("css selector", "#lora-rows .lora-row")


def test_queue_position_and_cancel_while_queued(page, base_url):
    slow = {"model": TINY_SD15, "prompt": "another client", "steps": 150, "num_images": 8,
            "width": 64, "height": 64}  # fmt: skip
    blocker = call_api(base_url, "/api/v1/jobs", slow)
    try:
        by_id(page, "generate").click()
        wait(page, lambda: by_id(page, "status").text == "Queued: position 1")
        snapshot(page, "5-queued")
        by_id(page, "cancel").click()
        wait(page, lambda: by_id(page, "status").get_attribute("data-state") == "cancelled")
        assert by_id(page, "error").text == "cancelled while queued"
    finally:
        call_api(base_url, f"/api/v1/jobs/{blocker['id']}/cancel", {})
    wait(page, lambda: call_api(base_url, f"/api/v1/jobs/{blocker['id']}")["status"] == "cancelled")


def test_cancel_while_running(page):
    fill(page, "steps", 150)
    fill(page, "num-images", 4)
    by_id(page, "generate").click()
    wait(page, lambda: by_id(page, "status").text.startswith("Step"))
    # the live preview (the server's default: every 5 steps) stands in the results area
    wait(page, lambda: (src := page.execute_script(
        "const img = document.querySelector('#live-preview img'); return img && img.src;"
    )) and src.startswith("data:image/png;base64,"))  # fmt: skip
    assert "previewing" in by_id(page, "results").get_attribute("class")
    by_id(page, "cancel").click()
    wait(page, lambda: by_id(page, "status").get_attribute("data-state") == "cancelled")
    assert "cancel" in by_id(page, "error").text.lower()
    assert not page.find_elements("css selector", "#live-preview")  # the earlier results are back
    assert "previewing" not in by_id(page, "results").get_attribute("class")
    assert by_id(page, "generate").is_enabled() and not by_id(page, "cancel").is_enabled()
    fill(page, "steps", 2)
    fill(page, "num-images", 1)


def test_gallery_shows_searches_and_deletes(page):
    by_id(page, "tab-gallery").click()
    # txt2img 2 + 2 with a new seed, img2img 1, inpaint 1, ControlNet 1, with and without a LoRA 2
    wait(page, lambda: len(results(page, "#gallery-grid .gallery-item")) == 9)
    snapshot(page, "3-gallery")
    assert page.find_elements("css selector", "#gallery-grid .gallery-item .send-inpaint")
    fill(page, "gallery-search", "circle")
    wait(page, lambda: len(results(page, "#gallery-grid .gallery-item")) == 4)
    items = page.find_elements("css selector", "#gallery-grid .gallery-item")
    items[0].find_element("css selector", ".gallery-delete").click()
    wait(page, lambda: len(page.find_elements("css selector", "#gallery-grid .gallery-item")) == 3)
    by_id(page, "gallery-refresh").click()
    wait(page, lambda: len(results(page, "#gallery-grid .gallery-item")) == 3)


def test_png_info_loads_parameters_into_the_form(page, base_url, tmp_path):
    from PIL import Image, PngImagePlugin

    remaining = page.find_element("css selector", "#gallery-grid .gallery-item")
    request = urllib.request.Request(base_url + f"/api/v1/images/{remaining.get_attribute('data-image-id')}",
                                     headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    made = tmp_path / "made.png"
    with urllib.request.urlopen(request) as answer:
        made.write_bytes(answer.read())
    seed = Image.open(made).info["parameters"].split("Seed: ")[1].split(",")[0]

    by_id(page, "tab-pnginfo").click()
    upload(page, "pnginfo-file", made)
    wait(page, lambda: "Seed: " in by_id(page, "pnginfo-parameters").text)
    snapshot(page, "4-png-info")
    fill_elsewhere = {"prompt": "changed", "steps": 9, "seed": 1}
    by_id(page, "tab-generate").click()
    for element_id, value in fill_elsewhere.items():
        fill(page, element_id, value)
    by_id(page, "tab-pnginfo").click()
    by_id(page, "pnginfo-load").click()

    def loaded(prompt: str) -> bool:
        """The form holds `prompt` and the load has finished: it switches to Generate last (a test that
        went on before then would have its next tab taken away, as with network latency)."""
        form_prompt = by_id(page, "prompt").get_attribute("value")
        return by_id(page, "panel-generate").is_displayed() and form_prompt == prompt

    wait(page, lambda: loaded(PROMPT))
    assert by_id(page, "seed").get_attribute("value") == seed
    assert by_id(page, "steps").get_attribute("value") == "2"
    assert by_id(page, "model").get_attribute("value") == TINY_SD15

    # another tool's PNG with A1111 parameters
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a (blue:1.2) square\nNegative prompt: text\nSteps: 7, Sampler: DPM++ 2M, "
                                "Schedule type: Karras, CFG scale: 5, Seed: 99, Size: 64x64")  # fmt: skip
    foreign = tmp_path / "foreign.png"
    Image.new("RGB", (32, 32), "white").save(foreign, pnginfo=info)
    by_id(page, "tab-pnginfo").click()
    upload(page, "pnginfo-file", foreign)
    wait(page, lambda: "Seed: 99" in by_id(page, "pnginfo-parameters").text)
    by_id(page, "pnginfo-load").click()
    wait(page, lambda: loaded("a (blue:1.2) square"))
    assert by_id(page, "negative").get_attribute("value") == "text"
    assert by_id(page, "syntax").get_attribute("value") == "a1111"
    assert by_id(page, "scheduler").get_attribute("value") == "DPM++ 2M Karras"
    assert [by_id(page, i).get_attribute("value") for i in ("steps", "guidance", "seed")] == ["7", "5", "99"]
