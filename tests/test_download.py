"""`kandinsky download` and the hub path of every command, against a real HTTP server on 127.0.0.1.

The server (tests/hub_server.py) serves the tiny fixture's ``prior/`` and ``inpaint/`` folders (or altered
copies) as hub repos; the CLI runs in a subprocess with HF_ENDPOINT pointing at it and an empty HF_HOME, so
huggingface_hub does real HTTP: repo info, tree listing, HEAD and GET (with Range) of every file.
"""
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE, assert_scaled
from hub_server import HubServer, client_env, run_kandinsky
from kandinsky_cli import model_io
from kandinsky_cli.download import select_files
from kandinsky_cli.errors import UserError

PRIOR_ID = "tiny/kandinsky-2-1-prior"
DECODER_ID = "tiny/kandinsky-2-1-inpaint"
MODELS = ["--prior-model", PRIOR_ID, "--decoder-model", DECODER_ID]
MiB = 2**20


def listing(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def hub():
    server = HubServer()
    server.add_repo(PRIOR_ID, FIXTURE / "prior")
    server.add_repo(DECODER_ID, FIXTURE / "inpaint")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def home(tmp_path):
    """An empty HF_HOME; the CLI's working directory is tmp_path."""
    return tmp_path / "hf"


def kandinsky(hub_url, home, *args, **env):
    return run_kandinsky(client_env(hub_url, home, **env), *args, cwd=home.parent)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def one_error_line(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def downloaded(result) -> dict:
    """The --json summary of `kandinsky download`, per repo id."""
    return json.loads(ok(result).stdout)["models"]


def served_copy(tmp_path, name, extra=()):
    """A copy of the fixture's ``name`` folder with ``extra`` files ({path: bytes}) added."""
    folder = tmp_path / "served" / name
    shutil.copytree(FIXTURE / name, folder)
    for path, data in dict(extra).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


# ------------------------------------------------------------------------------------------ file selection

UNET = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin"]
TEXT = ["text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
        "text_encoder/flax_model.msgpack", "text_encoder/tf_model.h5", "text_encoder/model.onnx",
        "text_encoder/onnx/model.onnx", "text_encoder/pytorch_model.bin.index.json"]
MOVQ = ["movq/config.json", "movq/diffusion_pytorch_model.safetensors.index.json",
        "movq/diffusion_pytorch_model-00001-of-00002.safetensors",
        "movq/diffusion_pytorch_model-00002-of-00002.safetensors",
        "movq/diffusion_pytorch_model.fp16.safetensors.index.json",
        "movq/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "movq/diffusion_pytorch_model.fp16-00002-of-00002.safetensors", "movq/diffusion_pytorch_model.ckpt"]
TOKENIZER = ["tokenizer/tokenizer.json", "tokenizer/sentencepiece.bpe.model", "tokenizer/merges.txt",
             "tokenizer/special_tokens_map.json"]
REPO = ["model_index.json", "README.md", ".gitattributes", "pipeline.pt"] + UNET + TEXT + MOVQ + TOKENIZER


def test_select_files_on_the_fixture_takes_every_file_a_pipeline_folder_holds():
    # the fixture folders are diffusers' save_pretrained output: exactly what a pipeline loads
    for name in ("prior", "inpaint"):
        files = listing(FIXTURE / name)
        assert select_files(files, "float32") == files
        assert select_files(files + ["unet/diffusion_pytorch_model.bin", "notes.md"], "float16") == files


def test_select_files_float32_plain_weights_only_never_pickles():
    assert select_files(REPO, "float32") == sorted(
        ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
         "text_encoder/config.json", "text_encoder/model.safetensors",
         "movq/config.json", "movq/diffusion_pytorch_model.safetensors.index.json",
         "movq/diffusion_pytorch_model-00001-of-00002.safetensors",
         "movq/diffusion_pytorch_model-00002-of-00002.safetensors"] + TOKENIZER)


def test_select_files_float16_takes_the_variant_per_component():
    assert select_files(REPO, "float16") == sorted(
        ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
         "text_encoder/config.json", "text_encoder/model.safetensors",   # no fp16 variant: the plain file
         "movq/config.json", "movq/diffusion_pytorch_model.fp16.safetensors.index.json",
         "movq/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
         "movq/diffusion_pytorch_model.fp16-00002-of-00002.safetensors"] + TOKENIZER)


def test_select_files_older_variant_shard_names_and_bad_dtype():
    legacy = ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors.index.json",
              "unet/diffusion_pytorch_model-00001-of-00002.fp16.safetensors",
              "unet/diffusion_pytorch_model-00002-of-00002.fp16.safetensors",
              "unet/diffusion_pytorch_model.safetensors"]
    assert select_files(legacy, "float16") == sorted(legacy[:4])
    assert select_files(legacy, "float32") == [legacy[0], legacy[4]]
    with pytest.raises(UserError, match="bad dtype 'bf16'"):
        select_files(legacy, "bf16")


@pytest.mark.parametrize("dtype, variant", [("float32", None), ("float16", "fp16")])
def test_the_loader_finds_its_weights_among_the_selected_files(tmp_path, dtype, variant):
    """model_io.weight_files (what the networks load) only ever opens files that select_files fetches."""
    for path in REPO:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    for tag in ("", ".fp16"):   # index files name their shards
        shards = [p.rpartition("/")[2] for p in MOVQ if p.endswith(".safetensors") and (".fp16" in p) == bool(tag)]
        index = tmp_path / f"movq/diffusion_pytorch_model{tag}.safetensors.index.json"
        index.write_text(json.dumps({"weight_map": dict(zip("ab", shards))}))
    selected = set(select_files(REPO, dtype))
    for component, base in (("unet", model_io.DIFFUSERS_WEIGHTS), ("text_encoder", model_io.TRANSFORMERS_WEIGHTS),
                            ("movq", model_io.DIFFUSERS_WEIGHTS)):
        loaded = model_io.weight_files(tmp_path / component, base, variant)
        assert {p.relative_to(tmp_path).as_posix() for p in loaded} <= selected


# ------------------------------------------------------------------------------------------ real downloads

def test_download_fetches_only_the_loaded_files_then_everything_runs_offline(tmp_path, home, golden, cases):
    junk = {"prior/diffusion_pytorch_model.bin": b"pickle", "text_encoder/pytorch_model.bin": b"pickle",
            "text_encoder/flax_model.msgpack": b"x", "README.md": b"# card", ".gitattributes": b"*.bin lfs"}
    hub = HubServer()
    hub.add_repo(PRIOR_ID, served_copy(tmp_path, "prior", junk))
    hub.add_repo(DECODER_ID, FIXTURE / "inpaint")
    hub.start()
    try:
        models = downloaded(kandinsky(hub.url, home, "download", *MODELS, "--json"))
    finally:
        hub.stop()
    for repo_id, name in ((PRIOR_ID, "prior"), (DECODER_ID, "inpaint")):
        expected = listing(FIXTURE / name)
        assert sorted(hub.fetched(repo_id)) == expected                  # each file once, nothing else
        assert sorted(models[repo_id]["files"]) == expected
        folder = Path(models[repo_id]["folder"])
        for path in expected:
            assert (folder / path).read_bytes() == (FIXTURE / name / path).read_bytes(), path
        assert models[repo_id]["total_bytes"] == sum((FIXTURE / name / p).stat().st_size for p in expected)
    requested = {path for _, path, _ in hub.file_requests("HEAD") + hub.file_requests("GET")}
    assert not any(p.endswith((".bin", ".msgpack", ".md")) or p.startswith(".") for p in requested)

    # the server is gone: the cache is complete, every command runs from it
    check = ok(kandinsky(hub.url, home, "download", *MODELS, "--check"))
    assert check.stdout.startswith("ok: ")
    again = downloaded(kandinsky(hub.url, home, "download", *MODELS, "--json", HF_HUB_OFFLINE="1"))
    assert again == models
    case = cases["prior_cases"][0]
    out = tmp_path / "embeds"
    ok(kandinsky(hub.url, home, "prior", case["prompt"], "--model", PRIOR_ID, "--offline", "--mode", "pynative",
                 "--steps", case["num_inference_steps"], "--seed", case["noise_seed"], "--out-dir", out,
                 "--dtype", "float32"))
    assert_scaled(np.load(out / "prior.image_embeds.npy"), golden("prior_pipeline")["case0/image_embeds"], 1e-4)


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path, home):
    big = np.random.default_rng(0).bytes(11 * MiB)   # over huggingface_hub's 10 MiB chunk: a part survives
    hub = HubServer()
    hub.add_repo(PRIOR_ID, served_copy(tmp_path, "prior", {"extra/config.json": b"{}",
                                                           "extra/model.safetensors": big}))
    hub.add_repo(DECODER_ID, FIXTURE / "inpaint")
    hub.cut[f"{PRIOR_ID}/extra/model.safetensors"] = 10 * MiB + 12345
    hub.start()
    try:
        models = downloaded(kandinsky(hub.url, home, "download", *MODELS, "--json"))
    finally:
        hub.stop()
    gets = [rng for repo, path, rng in hub.file_requests() if path == "extra/model.safetensors"]
    assert gets == [None, f"bytes={10 * MiB}-"]
    assert (Path(models[PRIOR_ID]["folder"]) / "extra/model.safetensors").read_bytes() == big


def test_ctrl_c_stops_at_once_and_a_rerun_fetches_only_the_rest(tmp_path, home, hub):
    weights = "unet/diffusion_pytorch_model.safetensors"
    hub.stall[f"{DECODER_ID}/{weights}"] = 1000
    others = [p for p in listing(FIXTURE / "inpaint") if p != weights]
    run = subprocess.Popen([sys.executable, "-m", "kandinsky_cli", "download", *MODELS], cwd=tmp_path,
                           env=client_env(hub.url, home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hub.stalled.wait(60), "the stalled transfer never started"
        deadline = time.time() + 30
        while not set(others) <= set(hub.fetched(DECODER_ID)) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)   # the client stores those small files
        run.send_signal(signal.SIGINT)
        code = run.wait(timeout=10)
    finally:
        run.kill()
    assert code == 130 and "interrupted" in run.stderr.read()
    gets_before = len(hub.file_requests())
    hub.release()
    models = downloaded(kandinsky(hub.url, home, "download", *MODELS, "--json"))
    assert [(repo, path) for repo, path, _ in hub.file_requests()[gets_before:]] == [(DECODER_ID, weights)]
    assert (Path(models[DECODER_ID]["folder"]) / weights).read_bytes() == (FIXTURE / "inpaint" / weights).read_bytes()


def test_a_pinned_revision_is_what_gets_cached(tmp_path, home):
    config = "scheduler/scheduler_config.json"
    changed = json.dumps({**json.loads((FIXTURE / "prior" / config).read_text()), "note": "v2"}).encode()
    hub = HubServer()
    main = hub.add_repo(PRIOR_ID, FIXTURE / "prior")
    v2 = hub.add_repo(PRIOR_ID, served_copy(tmp_path, "prior", {config: changed}), revision="v2")
    hub.add_repo(DECODER_ID, FIXTURE / "inpaint")
    hub.add_repo(DECODER_ID, FIXTURE / "inpaint", revision="v2")
    hub.start()
    try:
        models = downloaded(kandinsky(hub.url, home, "download", *MODELS, "--revision", "v2", "--json"))
        assert models[PRIOR_ID]["commit"] == v2 and models[PRIOR_ID]["revision"] == "v2"
        assert (Path(models[PRIOR_ID]["folder"]) / config).read_bytes() == changed
        ok(kandinsky(hub.url, home, "download", *MODELS, "--revision", "v2", "--check"))
        one_error_line(kandinsky(hub.url, home, "download", *MODELS, "--check"), PRIOR_ID,
                       "not in the Hugging Face cache")
        pinned = downloaded(kandinsky(hub.url, home, "download", "--prior-model", PRIOR_ID, "--decoder-model",
                                      FIXTURE / "inpaint", "--revision", main, "--json"))
        assert (Path(pinned[PRIOR_ID]["folder"]) / config).read_bytes() == (FIXTURE / "prior" / config).read_bytes()
        assert pinned[str(FIXTURE / "inpaint")]["commit"] is None   # a local folder is used as it is
        one_error_line(kandinsky(hub.url, home, "download", *MODELS, "--revision", "v3"),
                       "revision 'v3' does not exist")
    finally:
        hub.stop()


def test_float16_takes_the_fp16_variant_files_where_served(tmp_path, home):
    variants = {"prior/diffusion_pytorch_model.fp16.safetensors": b"fp16 prior",
                "text_encoder/model.fp16.safetensors": b"fp16 text encoder"}
    hub = HubServer()
    hub.add_repo(PRIOR_ID, served_copy(tmp_path, "prior", variants))
    hub.add_repo(DECODER_ID, FIXTURE / "inpaint")
    hub.start()
    try:
        models = downloaded(kandinsky(hub.url, home, "download", *MODELS, "--dtype", "float16", "--json"))
    finally:
        hub.stop()
    plain = {"prior/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}
    expected = sorted(set(listing(FIXTURE / "prior")) - plain | set(variants))
    assert sorted(hub.fetched(PRIOR_ID)) == expected == sorted(models[PRIOR_ID]["files"])
    assert sorted(hub.fetched(DECODER_ID)) == listing(FIXTURE / "inpaint")
    ok(kandinsky(hub.url, home, "download", *MODELS, "--check", "--dtype", "float16"))
    line = one_error_line(kandinsky(hub.url, home, "download", *MODELS, "--check"), PRIOR_ID, "lacks 2 file(s)")
    assert all(p in line for p in plain)


@pytest.mark.parametrize("case", ["missing repo", "gated repo", "server error", "connection refused",
                                  "offline, not cached"])
def test_hub_failures_are_one_error_line(hub, home, case):
    args, env = list(MODELS), {}
    if case == "missing repo":
        args[1], fragments = "tiny/no-such-model", ["tiny/no-such-model", "no such repo", "HTTP 404"]
    elif case == "gated repo":
        hub.gated.add(PRIOR_ID)
        fragments = [PRIOR_ID, "gated", "HTTP 403", "HF_TOKEN"]
    elif case == "server error":
        hub.fail[f"{DECODER_ID}/unet/diffusion_pytorch_model.safetensors"] = 500
        fragments = [DECODER_ID, "HTTP 500", "unet/diffusion_pytorch_model.safetensors", "try again"]
    elif case == "connection refused":
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"   # discard port: nothing listens there
        fragments = [PRIOR_ID, "cannot reach http://127.0.0.1:9"]
    else:
        args.append("--offline")
        fragments = [PRIOR_ID, "not in the Hugging Face cache", "kandinsky download"]
    one_error_line(kandinsky(hub.url, home, "download", *args, **env), *fragments)


def test_when_the_hub_refuses_a_complete_cached_copy_is_used_with_a_warning(hub, home):
    ok(kandinsky(hub.url, home, "download", *MODELS))
    hub.gated.add(PRIOR_ID)   # e.g. the repo became gated after it was downloaded
    result = ok(kandinsky(hub.url, home, "download", *MODELS, "--json"))
    assert result.stderr.splitlines() == [f"warning: model {PRIOR_ID}: the repo is gated on {hub.url} (HTTP 403); "
                                          f"using its complete copy in the cache"]
    assert sorted(json.loads(result.stdout)["models"]) == sorted([PRIOR_ID, DECODER_ID])


def test_progress_on_a_terminal_shows_bytes(tmp_path, home, hub):
    controller, terminal = pty.openpty()
    run = subprocess.Popen([sys.executable, "-m", "kandinsky_cli", "download", *MODELS], cwd=tmp_path,
                           env=client_env(hub.url, home, TERM="xterm", COLUMNS="120"),
                           stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:   # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert run.wait(timeout=60) == 0
    text = shown.decode(errors="replace")
    assert "Fetching 11 files" in text and "11/11" in text and "7.4/7.4 MB" in text and "eta" in text


# ------------------------------------------------------------------------------------------ a damaged cache

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def local_cache(tmp_path, monkeypatch):
    """A cache holding the fixture's prior and decoder as huggingface_hub lays them out (no network involved)."""
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    for repo_id, name in ((PRIOR_ID, "prior"), (DECODER_ID, "inpaint")):
        repo = hub / ("models--" + repo_id.replace("/", "--"))
        shutil.copytree(FIXTURE / name, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub / ("models--" + DECODER_ID.replace("/", "--"))


def _not_utf8(repo):
    (repo / "refs" / "main").write_bytes(b"\xff\xfe\x00\x9c" + COMMIT.encode()[:20])


def _missing_snapshot(repo):
    (repo / "refs" / "main").write_text("f" * 40)


def _ref_is_a_folder(repo):
    (repo / "refs" / "main").unlink()
    (repo / "refs" / "main").mkdir()


def _broken_link(repo):
    (repo / "refs" / "main").unlink()
    (repo / "refs" / "main").symlink_to(repo / "nowhere")


def _not_a_hash(repo):
    (repo / "refs" / "main").write_text("../../../etc/passwd")


DAMAGE = {"not UTF-8": (_not_utf8, "refs/main holds"), "missing snapshot": (_missing_snapshot, "snapshot folder is "
          "missing"), "ref is a folder": (_ref_is_a_folder, "refs/main is a folder"),
          "broken link": (_broken_link, "refs/main cannot be read"), "not a hash": (_not_a_hash, "not a commit hash")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_entry_is_reported_never_a_traceback(local_cache, damage):
    from typer.testing import CliRunner

    from kandinsky_cli.cli import app

    runner = CliRunner()
    ok_check = runner.invoke(app, ["download", *MODELS, "--check"])
    assert ok_check.exit_code == 0 and ok_check.stdout.startswith("ok: "), ok_check.output
    spoil, words = DAMAGE[damage]
    spoil(local_cache)
    check = runner.invoke(app, ["download", *MODELS, "--check"])
    assert check.exit_code == 2 and "Traceback" not in check.output, check.output
    (line,) = check.stderr.splitlines()
    assert line.startswith(f"error: decoder: model {DECODER_ID}: the Hugging Face cache entry ") and words in line
    assert "damaged" in line and "kandinsky download" in line and PRIOR_ID not in line, line
    info = runner.invoke(app, ["info", "--json"])
    assert info.exit_code == 0 and "Traceback" not in info.output, info.output
    models = json.loads(info.stdout)["cache"]["models"]
    prior = [m for m in models if m["repo_id"] == PRIOR_ID]
    assert len(prior) == 1 and prior[0]["complete"]["float32"] and prior[0]["damaged"] is None
    bad = [m for m in models if m["repo_id"] == DECODER_ID and m["damaged"]]
    assert len(bad) == 1 and words in bad[0]["damaged"] and bad[0]["refs"] == ["main"], bad
    table = runner.invoke(app, ["info"])
    assert table.exit_code == 0 and "damaged" in table.stdout, table.output


def test_check_names_every_missing_model(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from typer.testing import CliRunner

    from kandinsky_cli.cli import app

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    result = CliRunner().invoke(app, ["download", *MODELS, "--check"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert f"prior: model {PRIOR_ID} is not in the Hugging Face cache" in line
    assert f"decoder: model {DECODER_ID} is not in the Hugging Face cache" in line


@pytest.mark.parametrize("revision", ["../refs/main", "a/b", "/etc/passwd", "..", ".", "main/../../x", "refs/pr/x",
                                      "", "ma in", "a\\b"])
@pytest.mark.parametrize("check", [True, False])
def test_a_revision_with_path_components_is_refused(local_cache, revision, check):
    from typer.testing import CliRunner

    from kandinsky_cli.cli import app

    result = CliRunner().invoke(app, ["download", *MODELS, "--revision", revision] + (["--check"] if check else []))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: bad --revision {revision!r}: give a branch, tag or commit name"), line


def test_plain_revisions_still_resolve(local_cache):
    from typer.testing import CliRunner

    from kandinsky_cli.cli import app

    for revision in ("main", COMMIT):
        result = CliRunner().invoke(app, ["download", *MODELS, "--revision", revision, "--check"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["download", *MODELS, "--revision", "v1.0", "--check"])
    assert result.exit_code == 2 and "not in the Hugging Face cache" in result.stderr


def test_batch_check_makes_the_model_checks_with_a_cached_hub_id(local_cache, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from kandinsky_cli.cli import app

    Image.new("RGB", (64, 48)).save(tmp_path / "in.png")
    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {image: in.png, prompt: x, mask_rects: ['0:9,0:9'], "
                                        "scheduler: ddim, steps: 1000}\n")
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "jobs.yaml"), "--check", *MODELS])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / 'jobs.yaml'}: jobs[0]: steps 1000 with scheduler ddim: "), line
