"""Devices (system.select_device), `kandinsky --version`, `kandinsky info` and shell completion.

This machine runs MindSpore on CPU only: the GPU and Ascend plugins of the wheel cannot load here, which is
what the device errors are checked against.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import FIXTURE
from hub_server import HubServer, client_env, run_kandinsky
from kandinsky_cli import __version__
from kandinsky_cli.cli import app
from kandinsky_cli.errors import UserError
from kandinsky_cli.system import DEVICES, select_device, usable_targets

SCRIPT = Path(sys.executable).with_name("kandinsky")


@pytest.fixture
def no_device_env(monkeypatch):
    monkeypatch.delenv("KANDINSKY_DEVICE", raising=False)
    monkeypatch.delenv("DEVICE_ID", raising=False)


def test_cpu_is_selected(no_device_env):
    assert select_device("cpu") == "cpu"
    assert select_device(None) == "cpu"   # MindSpore's choice on this machine

    import mindspore as ms
    assert ms.get_context("device_target") == "CPU"


@pytest.mark.parametrize("device", ["gpu", "ascend"])
def test_a_device_that_cannot_run_here_is_one_user_error(no_device_env, monkeypatch, device):
    if DEVICES[device] in usable_targets():
        pytest.skip(f"this machine can run MindSpore on {device}")
    with pytest.raises(UserError) as raised:
        select_device(device)
    message = str(raised.value)
    assert f"device {device} (--device) cannot run here" in message
    assert "only cpu works" in message and "use --device cpu" in message and "\n" not in message
    monkeypatch.setenv("KANDINSKY_DEVICE", device)
    with pytest.raises(UserError, match=f"device {device} \\(KANDINSKY_DEVICE\\) cannot run here.*; "
                                        "set KANDINSKY_DEVICE=cpu or unset it$"):
        select_device(None)


def test_bad_device_names_and_device_ids(no_device_env, monkeypatch):
    with pytest.raises(UserError, match=r"bad device 'tpu' \(--device\): use one of cpu, gpu, ascend"):
        select_device("tpu")
    monkeypatch.setenv("KANDINSKY_DEVICE", "npu")
    with pytest.raises(UserError, match=r"bad device 'npu' \(KANDINSKY_DEVICE\)"):
        select_device(None)
    monkeypatch.delenv("KANDINSKY_DEVICE")
    monkeypatch.setenv("DEVICE_ID", "first")
    with pytest.raises(UserError, match="DEVICE_ID='first'"):
        select_device("cpu")


def _env(tmp_path, endpoint="http://127.0.0.1:9", **extra):
    """A CLI environment without device settings; by default no hub answers (port 9)."""
    env = client_env(endpoint, tmp_path / "hf")
    for name in ("KANDINSKY_DEVICE", "DEVICE_ID"):
        env.pop(name, None)
    return {**env, **extra}


def test_info_with_an_unavailable_device_is_one_error_line(tmp_path):
    result = run_kandinsky(_env(tmp_path), "info", "--device", "gpu", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device gpu (--device) cannot run here"), result.stderr


def test_version_names_mindspore_and_the_default_device(no_device_env, monkeypatch):
    import mindspore as ms

    monkeypatch.setenv("KANDINSKY_DEVICE", "cpu")
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (f"kandinsky {__version__} (MindSpore {ms.__version__}, default device cpu "
                                     f"from KANDINSKY_DEVICE)")


def test_info_reports_versions_device_and_which_cached_models_are_complete(tmp_path):
    import huggingface_hub
    import mindspore as ms
    import numpy
    import tokenizers

    served = tmp_path / "served" / "prior"   # a prior with an fp16 variant that a float32 download skips
    shutil.copytree(FIXTURE / "prior", served)
    (served / "prior" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"fp16")
    hub = HubServer()
    hub.add_repo("tiny/prior", served)
    hub.add_repo("tiny/inpaint", FIXTURE / "inpaint")
    hub.start()
    try:
        env = _env(tmp_path, hub.url)
        fetched = run_kandinsky(env, "download", "--prior-model", "tiny/prior", "--decoder-model", "tiny/inpaint",
                                cwd=tmp_path)
        assert fetched.returncode == 0, fetched.stderr
    finally:
        hub.stop()
    result = run_kandinsky(env, "info", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["versions"] == {"kandinsky": __version__, "python": platform.python_version(),
                                "mindspore": ms.__version__, "numpy": numpy.__version__,
                                "huggingface_hub": huggingface_hub.__version__, "tokenizers": tokenizers.__version__}
    assert info["device"]["device"] == "cpu" and info["device"]["usable"] == ["cpu"]
    assert info["device"]["plugins"][0] == "cpu"
    assert info["threads"]["cpus"] == os.cpu_count() and info["threads"]["cpus_usable"] >= 1
    assert 0 < info["memory"]["available_bytes"] <= info["memory"]["total_bytes"]
    from kandinsky_cli import bf16
    assert info["bfloat16"] == {"available": bf16.available(), "reason": bf16.unavailable_reason(),
                                "auto": "bfloat16" if bf16.available() else "float32"}
    assert info["cache"]["hub_cache"] == env["HF_HUB_CACHE"]
    models = {m["repo_id"]: m for m in info["cache"]["models"]}
    assert sorted(models) == ["tiny/inpaint", "tiny/prior"]
    # bfloat16 and auto read the float32 files
    assert models["tiny/prior"]["complete"] == {"float32": True, "float16": False, "bfloat16": True, "auto": True}
    assert models["tiny/inpaint"]["complete"] == {"float32": True, "float16": True, "bfloat16": True, "auto": True}
    assert models["tiny/prior"]["refs"] == ["main"] and models["tiny/inpaint"]["bytes"] > 7_000_000


@pytest.fixture
def script():
    if not SCRIPT.exists():
        pytest.skip("the kandinsky console script is not installed next to this python")
    return SCRIPT


def _run_script(script, tmp_path, *args, **env):
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, **env})


def test_show_completion_prints_the_script_of_the_named_shell(script, tmp_path):
    # Typer takes the shell as an argument when shell detection is off; otherwise it detects the shell
    named = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    bash = _run_script(script, tmp_path, "--show-completion", "bash", **named)
    assert bash.returncode == 0 and "complete -o default -F _kandinsky_completion kandinsky" in bash.stdout
    zsh = _run_script(script, tmp_path, "--show-completion", "zsh", **named)
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef kandinsky")
    detected = subprocess.run(["bash", "-c", f"'{script}' --show-completion; true"], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
    assert "complete -o default -F _kandinsky_completion kandinsky" in detected.stdout


def test_completion_completes_commands_and_options(script, tmp_path):
    words = {"_KANDINSKY_COMPLETE": "complete_bash", "COMP_CWORD": "1", "COMP_WORDS": "kandinsky dow"}
    assert _run_script(script, tmp_path, **words).stdout.split() == ["download"]
    words.update(COMP_CWORD="2", COMP_WORDS="kandinsky download --d")
    assert _run_script(script, tmp_path, **words).stdout.split() == ["--decoder-model", "--dtype"]
