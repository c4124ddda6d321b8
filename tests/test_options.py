"""One option schema: the CLI, batch files, folder mode, metadata and the docs all follow kandinsky_cli/options.py."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from kandinsky_cli import options
from kandinsky_cli.batchfile import folder_jobs, load_batch
from kandinsky_cli.cli import PRIOR_ALIASES, app
from kandinsky_cli.core import InpaintRequest, Kandinsky, Prepared
from kandinsky_cli.errors import UserError

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {name: cmd for name, cmd in get_command(app).commands.items()}


def flags_of(command_name):
    """{flag: click option} of a command, hidden ones included."""
    found = {}
    for param in COMMANDS[command_name].params:
        for name in list(param.opts) + list(param.secondary_opts):
            found[name] = param
    return found


@pytest.mark.parametrize("command,scope", [("inpaint", options.JOB), ("batch", options.FOLDER),
                                           ("prior", options.PRIOR), ("mask", options.MASK),
                                           ("inpaint", options.ENGINE), ("batch", options.ENGINE)])
def test_every_option_of_a_scope_is_a_flag_of_its_command(command, scope):
    flags = flags_of(command)
    for option in options.in_scope(scope):
        if option.argument:
            continue
        assert option.flag in flags, (command, option.flag)
        param = flags[option.flag]
        assert not param.hidden, option.flag
        assert param.default in (None, False), (option.flag, param.default)   # defaults come from the schema
        if not option.required and option.default_text():
            assert f"[default: {option.default_text()}]" in (param.help or ""), option.flag
        for alias in option.aliases:
            assert alias in flags and flags[alias].hidden, alias


def test_vocabulary_yaml_key_is_the_flag_with_underscores():
    for option in options.OPTIONS:
        if option.argument:
            continue
        expected = option.key[:-1] if option.repeatable and option.key.endswith("s") and option.key != "mix" \
            else option.key
        assert option.flag == "--" + expected.replace("_", "-"), option.key


def test_the_same_thing_is_spelled_the_same_in_every_command():
    for name in ("prior", "inpaint", "batch"):
        flags = flags_of(name)
        for flag in ("--prior-model", "--mode", "--dtype", "--offline"):
            assert flag in flags and not flags[flag].hidden, (name, flag)
    for name in ("prior", "inpaint", "batch"):
        assert "--prompt" in flags_of(name)
    assert flags_of("prior")["--model"].hidden and flags_of("prior")["--steps"].hidden


@pytest.mark.parametrize("scope", [options.JOB, options.PRIOR, options.ENGINE])
def test_docs_tables_are_the_schema(scope):
    begin, end = options.table_markers(scope)
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    holders = [text for text in (path.read_text(encoding="utf-8") for path in docs) if begin in text]
    assert len(holders) == 1, f"{begin} should be in exactly one of README.md, docs/*.md"
    table = holders[0].split(begin + "\n", 1)[1].split(end, 1)[0].strip()
    aliases = PRIOR_ALIASES if scope == options.PRIOR else None
    assert table == options.markdown_table(scope, aliases), "run python scripts/update_docs.py"


def test_batch_example_documents_the_schema():
    text = (REPO / "configs" / "batch-example.yaml").read_text(encoding="utf-8")
    begin, end = options.YAML_MARKERS
    block = text.split(begin + "\n", 1)[1].split(end, 1)[0].strip()
    assert block == options.yaml_key_docs(), "run python scripts/update_docs.py"
    for key in options.JOB_KEYS:
        assert f"#   {key} " in block


def test_update_docs_check_passes():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "update_docs.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metadata_records_every_job_key(tmp_path):
    request = InpaintRequest({"image": tmp_path / "in.png", "prompt": "a hat", "mask_rects": ("0:2,0:2",),
                              "out": tmp_path / "o.png"})
    engine = Kandinsky(prior_model="p", decoder_model="d")
    from kandinsky_cli.region import plan

    mask = np.ones((4, 4), bool)
    job = Prepared(request, Image.new("RGB", (4, 4)), mask, 5, plan((4, 4), mask), mask.astype(np.float32), (4, 4))
    params = engine.parameters(job, 1)
    assert set(options.JOB_KEYS) <= set(params)
    assert {"working_size", "region", "region_box", "extend"} <= set(params)
    assert params["seed"] == 5 and params["steps"] == options.BY_KEY["steps"].default
    assert {"prior_model", "decoder_model", "dtype", "mode", "tool", "version"} <= set(params)


# Out-of-range values: the same check (and wording) from the command line, a batch file and folder mode.
BAD_VALUES = [("steps", 0), ("steps", 2000), ("prior_steps", 1), ("prior_steps", 100000), ("num_images", 0),
              ("num_images", 100000), ("height", 65536), ("width", 100), ("guidance_scale", -1.0),
              ("guidance_scale", 1e9), ("prior_guidance_scale", 101.0), ("seed", 2**32), ("grow", -1),
              ("feather", -3)]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_ranges_are_the_same_everywhere(tmp_path, key, value):
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    try:
        options.check_value(key, value, "X")
        raise AssertionError("accepted")
    except UserError as e:
        message = str(e).split("X: ", 1)[1]
    # command line: refused before any model is loaded (the model folders do not exist)
    flag = options.flag_of(key)
    result = CliRunner().invoke(app, ["inpaint", str(tmp_path / "in.png"), "--prompt", "x", "--mask-rect", "0:9,0:9",
                                      flag, str(value), "--prior-model", str(tmp_path / "none"),
                                      "--decoder-model", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {flag}: {message}"
    # batch file
    (tmp_path / "jobs.yaml").write_text(f"jobs:\n  - image: in.png\n    prompt: x\n    mask_rects: ['0:9,0:9']\n"
                                        f"    {key}: {value}\n")
    with pytest.raises(UserError) as err:
        load_batch(tmp_path / "jobs.yaml")
    assert str(err.value) == f"{tmp_path / 'jobs.yaml'}: jobs[0].{key}: {message}"
    # folder mode
    with pytest.raises(UserError) as err:
        folder_jobs(tmp_path, {"prompt": "x", "mask_rects": ["0:9,0:9"], key: value}, tmp_path / "out")
    assert str(err.value) == f"{flag}: {message}"


@pytest.mark.parametrize("args", [["prior", "x", "--prior-steps", "100000"], ["prior", "x", "--steps", "100000"],
                                  ["prior", "x", "--num-images", "100000"]])
def test_prior_ranges_before_loading(tmp_path, args):
    result = CliRunner().invoke(app, [*args, "--prior-model", str(tmp_path / "none"), "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and result.output.startswith("error: --")
    assert "none" not in result.output


def test_memory_estimate_refuses_a_size_that_does_not_fit(tmp_path, monkeypatch):
    from kandinsky_cli import memory

    decoder = REPO / "tests" / "fixtures" / "kandinsky21-tiny" / "inpaint"
    small = memory.decoder_peak_bytes(decoder, 64, 64, 2)
    big = memory.decoder_peak_bytes(decoder, 4096, 4096, 1)
    assert 0 < small < big
    monkeypatch.setattr(memory, "available_bytes", lambda: small * 2)
    assert memory.unet_call_rows(decoder, 64, 64, 2) == 2
    with pytest.raises(UserError, match=r"needs about .* GB but .* GB are available"):
        memory.unet_call_rows(decoder, 4096, 4096, 128)
    monkeypatch.setenv("KANDINSKY_MEMORY_CHECK", "0")
    assert memory.unet_call_rows(decoder, 4096, 4096, 128) == 128


def test_a_batch_that_does_not_fit_in_one_unet_call_is_split_into_equal_calls(monkeypatch):
    """The whole step batch per UNet call when it fits, else the largest divisor of the batch that fits."""
    from kandinsky_cli import memory

    decoder = REPO / "tests" / "fixtures" / "kandinsky21-tiny" / "inpaint"
    need = {rows: memory.decoder_peak_bytes(decoder, 512, 512, rows) for rows in (1, 2, 3, 6)}
    assert need[1] < need[2] < need[3] < need[6]
    for available, rows in ((need[6], 6), (need[6] - 1, 3), (need[3] - 1, 2), (need[2] - 1, 1)):
        monkeypatch.setattr(memory, "available_bytes", lambda: available)
        assert memory.unet_call_rows(decoder, 512, 512, 6) == rows, available
    monkeypatch.setattr(memory, "available_bytes", lambda: need[1] - 1)
    with pytest.raises(UserError, match="512x512 run needs about"):
        memory.unet_call_rows(decoder, 512, 512, 6)
    # a warm process (a server) holds the weights already: they are not counted again
    weights = sum(memory.weight_bytes(decoder / part) for part in ("unet", "movq"))
    assert memory.decoder_peak_bytes(decoder, 512, 512, 6, loaded=True) == need[6] - weights
    monkeypatch.setattr(memory, "available_bytes", lambda: need[6] - weights)
    assert memory.unet_call_rows(decoder, 512, 512, 6, loaded=True) == 6
    assert memory.unet_call_rows(decoder, 512, 512, 6) == 3


def test_alias_and_flag_together_is_one_error(tmp_path):
    result = CliRunner().invoke(app, ["inpaint", str(tmp_path / "x.png"), "--prompt", "x", "--mask-rect", "0:1,0:1",
                                      "--guidance", "3", "--guidance-scale", "5"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --guidance-scale and --guidance are the same option; give it once"
