"""`kandinsky serve` against a real uvicorn process on loopback (tiny fixture), `inpaint --server`, and the page in a
real headless Chromium. The tests share one server (module scope) and run in file order; the last one stops it
with SIGTERM."""
import base64
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import FIXTURE
from kandinsky_cli import options
from kandinsky_cli.cli import app
from kandinsky_cli.files import read_png_metadata
from kandinsky_cli.masks import read_mask_file

REPO = Path(__file__).resolve().parent.parent
ENGINE = ["--prior-model", str(FIXTURE / "prior"), "--decoder-model", str(FIXTURE / "inpaint"),
          "--mode", "pynative", "--dtype", "float32"]
TOKEN = "test-token-1234"
FAST = {"steps": 2, "prior_steps": 2, "resolution": 64}
BODY_LIMIT = 4 * 1024 * 1024
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url, out, proc, log):
        self.url, self.out, self.proc, self.log = url, out, proc, log
        self.client = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {TOKEN}"},
                                   timeout=60)

    def submit(self, job, image, mask=None, name="cat.png", mask_name="mask.png"):
        files = {"image": (name, image, "image/png")}
        if mask is not None:
            files["mask"] = (mask_name, mask, "image/png")
        return self.client.post("/inpaint", files=files, data={"job": json.dumps(job)})

    def wait(self, job_id, timeout=300, until=("done", "failed", "cancelled")):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.client.get(f"/jobs/{job_id}").json()
            if state["status"] in until:
                return state
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {state['status']} after {timeout} s")

    def job_folders(self):
        return sorted(p.name for p in self.out.iterdir())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    cat = Image.open(REPO / "configs" / "examples" / "cat.png").convert("RGB")
    cat.resize((64, 64), Image.Resampling.BICUBIC).save(d / "cat.png")
    cat.resize((128, 128), Image.Resampling.BICUBIC).save(d / "cat128.png")
    Image.new("1", (10000, 10000)).save(d / "big.png")          # over the pixel policy, a few kB
    (d / "notes.png").write_text("not an image\n")
    Image.new("L", (64, 64), 0).save(d / "black.png")
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "out"
    log_path = out.parent / "serve.log"
    port = _free_port()
    env = dict(os.environ, KANDINSKY_SERVE_MAX_BODY_BYTES=str(BODY_LIMIT))
    for name in ("KANDINSKY_TOKEN", "KANDINSKY_SERVER"):
        env.pop(name, None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kandinsky_cli", "serve", "--port", str(port), "--out-dir",
                                 str(out), "--token", TOKEN, "--queue", "1", *ENGINE],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if httpx.get(url + "/api/v1/options", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "server did not start:\n" + log_path.read_text()
        time.sleep(0.5)
    s = Server(url, out, proc, log_path)
    yield s
    s.client.close()
    if proc.poll() is None:
        proc.terminate()
        proc.wait(60)


def png_bytes(path):
    return Path(path).read_bytes()


def pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ------------------------------------------------------------------------------------------ access

def test_token_required_and_checked(server):
    assert httpx.get(server.url + "/api/v1/options").status_code == 401
    assert "Authorization: Bearer" in httpx.get(server.url + "/api/v1/options").json()["error"]
    wrong = httpx.get(server.url + "/api/v1/options", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json() == {"error": "wrong token (header 'Authorization: Bearer TOKEN')"}
    assert httpx.post(server.url + "/api/v1/inpaint", files={"image": ("a.png", b"x")}).status_code == 401
    assert server.client.get("/options").status_code == 200
    page = httpx.get(server.url + "/")     # the page itself holds no data; it asks for the token
    assert page.status_code == 200 and "<canvas id=\"mask\">" in page.text


def test_non_loopback_needs_token_or_no_auth():
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", *ENGINE])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: --host 0.0.0.0 makes the server reachable")


def test_options_come_from_the_schema(server):
    schema = server.client.get("/options").json()
    assert [o["key"] for o in schema["options"]] == [o.key for o in options.OPTIONS]
    by_key = {o["key"]: o for o in schema["options"]}
    steps = options.BY_KEY["steps"]
    assert (by_key["steps"]["min"], by_key["steps"]["max"], by_key["steps"]["default"]) == \
        (steps.check.range[0], steps.check.range[1], steps.default)
    assert by_key["scheduler"]["choices"] == list(options.SCHEDULERS)
    assert by_key["guidance_scale"]["help"] == options.BY_KEY["guidance_scale"].help
    assert "out" not in schema["inpaint_keys"] and "image" not in schema["inpaint_keys"]


# ------------------------------------------------------------------------------------------ jobs

@pytest.fixture(scope="module")
def local_run(files):
    """`kandinsky inpaint` (a separate process) with the parameters the API job uses."""
    out = files / "local.png"
    cmd = [sys.executable, "-m", "kandinsky_cli", "inpaint", "cat.png", "--prompt", "a red hat", "--mask-rect",
           "8:40,16:56", "--seed", "7", "--steps", "2", "--prior-steps", "2", "--resolution", "64", "-o", str(out),
           *ENGINE]
    result = subprocess.run(cmd, cwd=files, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


JOB = {"prompt": "a red hat", "mask_rects": ["8:40,16:56"], "seed": 7, **FAST}


def test_job_equals_cli_and_second_job_is_warm(server, files, local_run):
    accepted = server.submit(JOB, png_bytes(files / "cat.png"))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    state = server.wait(job_id)
    assert state["status"] == "done", state
    image = server.client.get(f"/jobs/{job_id}/images/1")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert np.array_equal(pixels(image.content), pixels(png_bytes(local_run)))
    served = read_png_metadata(io.BytesIO(image.content))["parameters"]
    local = read_png_metadata(local_run)["parameters"]
    differ = {k for k in set(served) | set(local) if served.get(k) != local.get(k)}
    assert differ == {"image", "out"}, differ            # the server's own paths for the upload and the output
    assert server.client.get(f"/jobs/{job_id}/images/2").status_code == 404

    # the events of the job, replayed in order: queued, running, prior steps, decoder steps, done
    with server.client.stream("GET", f"/jobs/{job_id}/events") as stream:
        events = [line[7:] for line in stream.iter_lines() if line.startswith("event: ")]
        assert stream.headers["content-type"].startswith("text/event-stream")
    assert events == ["queued", "running", "progress", "progress", "progress", "progress", "done"]
    with server.client.stream("GET", f"/jobs/{job_id}/events") as stream:
        steps = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {\"stage")]
    assert [(s["stage"], s["step"]) for s in steps] == [("prior", 1), ("prior", 2), ("decoder", 1), ("decoder", 2)]

    # a second job (new prompt and seed, same shapes): nothing loaded again, only compute
    first = state["counters"]
    second = server.wait(server.submit({**JOB, "prompt": "a blue hat", "seed": 8},
                                       png_bytes(files / "cat.png")).json()["id"])
    assert second["status"] == "done", second
    after = second["counters"]
    assert {k: after[k] for k in ("prior_loads", "decoder_loads", "text_encoder_loads")} == \
        {k: first[k] for k in ("prior_loads", "decoder_loads", "text_encoder_loads")} == \
        {"prior_loads": 1, "decoder_loads": 1, "text_encoder_loads": 1}
    assert after["decoder_runs"] == first["decoder_runs"] + 1
    assert "decoder_load_s" not in second["timings"]
    print(f"\nwarm second job: {second['finished'] - second['started']:.2f} s, timings {second['timings']}")


def _cli_line(tmp, args):
    result = CliRunner().invoke(app, ["inpaint", *args, *ENGINE])
    assert result.exit_code == 2, result.output
    line = [l for l in result.output.splitlines() if l.strip()][-1]
    assert line.startswith("error: ")
    return line[len("error: "):]


@pytest.mark.parametrize("job, upload, mask, args, status", [
    ({"steps": 2000}, "cat.png", None, ["--steps", "2000"], 422),
    ({"mask_rects": ["0:10,abc"]}, "cat.png", None, ["--mask-rect", "0:10,abc"], 422),
    ({"prompt": "a\x07hat"}, "cat.png", None, ["--prompt", "a\x07hat"], 422),
    ({"height": 64}, "cat.png", None, ["--height", "64"], 422),
    ({"scheduler": "euler"}, "cat.png", None, ["--scheduler", "euler"], 422),
    ({"num_images": 0}, "cat.png", None, ["--num-images", "0"], 422),
    ({"mask_rects": []}, "cat.png", None, [], 422),                              # no mask at all
    ({"mask_rects": []}, "cat.png", "black.png", ["--mask", "black.png"], 422),  # a mask that selects nothing
    ({}, "notes.png", None, [], 422),                                            # not an image
    ({}, "big.png", None, [], 413),                                              # over the pixel policy
])
def test_bad_input_is_refused_with_the_cli_line(server, files, monkeypatch, job, upload, mask, args, status):
    monkeypatch.chdir(files)
    values = {"prompt": "a hat", "mask_rects": ["0:32,0:32"], **FAST, **job}
    base = {"prompt": ["--prompt", "a hat"], "mask_rects": ["--mask-rect", "0:32,0:32"], "steps": ["--steps", "2"],
            "prior_steps": ["--prior-steps", "2"], "resolution": ["--resolution", "64"]}
    cli_args = [upload] + [a for key, flag in base.items() if key not in job for a in flag] + args
    expected = _cli_line(files, cli_args)
    before = server.job_folders()
    response = server.submit(values, png_bytes(files / upload), png_bytes(files / mask) if mask else None,
                             name=upload, mask_name=mask)
    assert response.status_code == status, response.text
    assert response.json() == {"error": expected}
    assert server.job_folders() == before            # nothing queued, nothing kept


def test_inpaint_mix_takes_texts_only(server, files):
    """Issue 20's --mix in an inpaint job: texts (the prompt optional), never a file on the server."""
    values = {"mask_rects": ["0:32,0:32"], **FAST}
    bad = server.submit({**values, "prompt": "a hat", "mix": ["/etc/photo.png=0.5"]}, png_bytes(files / "cat.png"))
    assert bad.status_code == 400 and "names an image file" in bad.json()["error"], bad.text
    ok = server.submit({**values, "mix": ["a red hat=0.5", "a crown=0.5"], "strength": 0.5, "soft": True},
                       png_bytes(files / "cat.png"))
    assert ok.status_code == 202, ok.text
    assert server.wait(ok.json()["id"])["status"] == "done"


def test_malformed_requests(server, files, tmp_path):
    cat = png_bytes(files / "cat.png")
    r = server.submit({"prompt": "a hat", "stepz": 3}, cat)
    assert r.status_code == 400 and r.json()["error"].startswith("job: unknown key 'stepz' (did you mean 'steps'?)")
    target = tmp_path / "evil.png"
    for key, value in (("out", str(target)), ("image", str(files / "cat.png")), ("mask", str(files / "black.png")),
                       ("image_embeds", str(tmp_path / "e.npy"))):
        r = server.submit({"prompt": "a hat", "mask_rects": ["0:8,0:8"], key: value}, cat)
        assert r.status_code == 400 and r.json()["error"].startswith(f"job: key '{key}' is not accepted"), r.text
    assert not target.exists() and list(tmp_path.iterdir()) == []
    r = server.client.post("/inpaint", files={"image": ("cat.png", cat)}, data={"job": "{not json"})
    assert r.status_code == 400 and r.json()["error"].startswith("job: not valid JSON")
    r = server.client.post("/inpaint", data={"job": json.dumps({"prompt": "a hat"})})
    assert r.status_code == 400 and r.json() == {"error": "missing the 'image' file (multipart field 'image')"}
    r = server.submit({"prompt": "a hat", "mask_rects": ["0:8,0:8"]}, os.urandom(BODY_LIMIT + 1))
    assert r.status_code == 413 and r.json()["error"].startswith("request body too large")
    assert server.client.get("/jobs/nope").json() == {"error": "no job 'nope' on this server"}


def test_queue_full_cancel_and_recovery(server, files):
    cat = png_bytes(files / "cat.png")
    long_job = server.submit({**JOB, "steps": 400}, cat).json()["id"]
    deadline = time.monotonic() + 300
    while server.client.get(f"/jobs/{long_job}").json()["stage"] != "decoder":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    waiting = server.submit(JOB, cat)                 # --queue 1: one may wait ...
    assert waiting.status_code == 202
    full = server.submit(JOB, cat)                    # ... the next is refused
    assert full.status_code == 503
    assert full.json()["error"].startswith("the server is busy: 1 job(s) are already waiting")
    waiting_id = waiting.json()["id"]
    assert server.client.get(f"/jobs/{waiting_id}").json()["position"] == 1
    assert server.client.delete(f"/jobs/{waiting_id}").json()["status"] == "cancelled"
    assert server.client.delete(f"/jobs/{long_job}").status_code == 200
    state = server.wait(long_job, timeout=120)
    assert state["status"] == "cancelled" and state["step"] < state["total"] == 400
    assert sorted(p.name for p in (server.out / long_job).iterdir()) == ["image.png"]   # no output, no temp file
    assert server.client.delete(f"/jobs/{long_job}").status_code == 409
    after = server.wait(server.submit(JOB, cat).json()["id"])   # the engine runs on after a cancel
    assert after["status"] == "done"


def test_prior_and_info(server):
    r = server.client.post("/prior", json={"prompt": "a red hat", "prior_steps": 2, "seed": 3})
    assert r.status_code == 202, r.text
    state = server.wait(r.json()["id"])
    assert state["status"] == "done" and state["seed"] == 3
    emb = np.load(io.BytesIO(server.client.get(state["embeddings"]["image_embeds"][len("/api/v1"):]).content))
    neg = np.load(io.BytesIO(server.client.get(state["embeddings"]["negative_image_embeds"][len("/api/v1"):]).content))
    assert emb.shape == neg.shape and emb.shape[0] == 1 and np.isfinite(emb).all()
    bad = server.client.post("/prior", json={"prompt": "a hat", "mix": ["/etc/photo.png=0.5"]})
    assert bad.status_code == 400 and "names an image file" in bad.json()["error"]
    bad = server.client.post("/prior", json={"prompt": "a hat", "prior_steps": 1})
    assert bad.status_code == 422 and bad.json()["error"].startswith("--prior-steps: must be an integer from 2")
    info = server.client.get("/info").json()
    assert info["versions"]["mindspore"] and info["server"]["mode"] == "pynative"
    assert info["server"]["queue"]["limit"] == 1


# ------------------------------------------------------------------------------------------ inpaint --server

def test_inpaint_server_writes_what_a_local_run_writes(server, files, local_run, tmp_path, monkeypatch):
    env = dict(os.environ, KANDINSKY_TOKEN=TOKEN)
    env.pop("KANDINSKY_SERVER", None)
    out = tmp_path / "remote.png"
    cmd = [sys.executable, "-m", "kandinsky_cli", "inpaint", "cat.png", "--server", server.url, "--prompt",
           "a red hat", "--mask-rect", "8:40,16:56", "--seed", "7", "--steps", "2", "--prior-steps", "2",
           "--resolution", "64", "-o", str(out), "--json"]
    result = subprocess.run(cmd, cwd=files, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs"] == [str(out)]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(local_run)))
    remote, local = read_png_metadata(out)["parameters"], read_png_metadata(local_run)["parameters"]
    assert {k for k in set(remote) | set(local) if remote.get(k) != local.get(k)} == {"out"}
    # bad input: the local run's line, exit 2; a wrong token: exit 2; no output written
    monkeypatch.chdir(files)
    big = subprocess.run([*cmd[:4], "big.png", *cmd[5:]], cwd=files, capture_output=True, text=True, env=env,
                         timeout=300)
    assert big.returncode == 2 and big.stderr.strip().splitlines()[-1] == \
        "error: " + _cli_line(files, ["big.png", "--prompt", "a", "--mask-rect", "0:8,0:8"])
    wrong = subprocess.run(cmd[:-3] + ["-o", str(tmp_path / "w.png")], cwd=files, capture_output=True, text=True,
                           env={**env, "KANDINSKY_TOKEN": "nope"}, timeout=300)
    assert wrong.returncode == 2 and "wrong token" in wrong.stderr and not (tmp_path / "w.png").exists()


# ------------------------------------------------------------------------------------------ the page

def _browser(tmp_path):
    reason = None
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = "no /usr/bin/chromium and /usr/bin/chromedriver (apt-get install -y chromium chromium-driver)"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            reason = "selenium is not installed (pip install -e '.[test]')"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--force-device-scale-factor=1", "--window-size=1280,800", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def _segment_distance(x, y, a, b):
    (ax, ay), (bx, by) = a, b
    t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
    return np.hypot(x - (ax + t * (bx - ax)), y - (ay + t * (by - ay)))


def test_page_paints_a_mask_and_runs(server, files, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("SE_OFFLINE", "true")   # Selenium Manager must not look for a browser online
    driver = _browser(tmp_path)
    try:
        driver.set_window_size(1280, 800)
        driver.get(server.url + f"/#token={TOKEN}")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.ID, "opt-steps"))
        driver.find_element(By.ID, "file").send_keys(str(files / "cat128.png"))
        wait.until(lambda d: d.find_element(By.ID, "stage").is_displayed())
        body = driver.find_element(By.TAG_NAME, "body")
        assert driver.find_element(By.ID, "size-value").text == "6"      # 128 / 20
        ActionChains(driver).send_keys_to_element(body, "]").perform()
        assert driver.find_element(By.ID, "size-value").text == "8"      # ] grows the brush
        mask = driver.find_element(By.ID, "mask")
        left, top, width, height = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height]", mask)
        scale = width / 128

        def at(x, y):   # an image point as an offset from the canvas' centre (Selenium's origin)
            return round(x * scale - width / 2), round(y * scale - height / 2)

        stroke = ((20, 90), (100, 90))
        chain = ActionChains(driver).move_to_element_with_offset(mask, *at(*stroke[0])).click_and_hold()
        for k in range(1, 9):
            chain.move_to_element_with_offset(mask, *at(20 + 10 * k, 90))
        chain.release().perform()
        driver.find_element(By.ID, "tool-rect").click()
        ActionChains(driver).move_to_element_with_offset(mask, *at(70, 20)).click_and_hold() \
            .move_to_element_with_offset(mask, *at(90, 35)).move_to_element_with_offset(mask, *at(110, 50)) \
            .release().perform()
        driver.find_element(By.TAG_NAME, "summary").click()
        for key, value in (("steps", "2"), ("resolution", "64"), ("seed", "11"), ("prior_steps", "2")):
            field = driver.find_element(By.ID, f"opt-{key}")
            field.clear()
            field.send_keys(value)
        prompt = driver.find_element(By.ID, "prompt")
        prompt.send_keys("a red hat")
        prompt.send_keys(Keys.ENTER)                                      # Enter runs
        after = driver.find_element(By.ID, "after")
        WebDriverWait(driver, 300).until(
            lambda d: after.get_attribute("data-job") and d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", after)
            or "error" in d.find_element(By.ID, "status").get_attribute("class"))
        job_id = after.get_attribute("data-job")
        assert job_id, driver.find_element(By.ID, "status").text
        state = server.client.get(f"/jobs/{job_id}").json()
        assert state["status"] == "done" and state["seed"] == 11

        # the mask the server received: the stroke (radius 4 around the segment) and the rectangle, nothing else
        received = read_mask_file(server.out / job_id / "mask.png") >= 0.5     # as the tool reads masks
        assert received.shape == (128, 128)
        y, x = np.mgrid[0:128, 0:128] + 0.5
        dist = _segment_distance(x, y, *stroke)
        in_rect = lambda m: (x >= 70 + m) & (x <= 110 - m) & (y >= 20 + m) & (y <= 50 - m)   # noqa: E731
        must = (dist <= 3) | in_rect(1)
        never = (dist > 5) & ~in_rect(-1)
        assert received[must].all(), f"{int((~received[must]).sum())} painted pixels missing"
        assert not received[never].any(), f"{int(received[never].sum())} pixels outside the painted area"

        # the result shown is the job's PNG, pixel for pixel
        shown = driver.execute_script(
            "const img = arguments[0], c = document.createElement('canvas');"
            "c.width = img.naturalWidth; c.height = img.naturalHeight; c.getContext('2d').drawImage(img, 0, 0);"
            "return c.toDataURL('image/png');", after)
        shown_px = pixels(base64.b64decode(shown.split(",", 1)[1]))
        result = pixels(png_bytes(server.out / job_id / "out.png"))
        assert np.array_equal(shown_px, result)
        # pasted back: outside the painted mask the result is the input, bit for bit; inside it is repainted
        original = np.asarray(Image.open(files / "cat128.png").convert("RGB"))
        assert np.array_equal(result[~received], original[~received])
        assert (result[received] != original[received]).any(-1).mean() > 0.5
        assert driver.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
        if os.environ.get("KANDINSKY_SCREENSHOT") == "1":
            driver.set_window_size(1280, 1250)          # tall enough for the before/after row
            driver.execute_script("document.getElementById('more').open = false; window.scrollTo(0, 0)")
            time.sleep(0.3)
            target = REPO / "docs" / "images" / "serve.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(target))

        # phone width: no sideways scrolling, Run still reachable
        driver.set_window_size(390, 844)
        time.sleep(0.3)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        assert driver.find_element(By.ID, "run").is_displayed()
    finally:
        driver.quit()


# ------------------------------------------------------------------------------------------ stopping (last)

def test_sigterm_stops_the_running_job_and_exits_130(server, files):
    job_id = server.submit({**JOB, "steps": 400}, png_bytes(files / "cat.png")).json()["id"]
    deadline = time.monotonic() + 300
    while server.client.get(f"/jobs/{job_id}").json()["stage"] != "decoder":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(120) == 130
    last = server.log.read_text().strip().splitlines()[-1]
    assert last.startswith("interrupted: the server stopped;") and "cancelled" in last
    assert sorted(p.name for p in (server.out / job_id).iterdir()) == ["image.png"]
