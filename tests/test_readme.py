"""Every command in README.md and docs/*.md works as written.

Fenced blocks are opted in by their info string:

* ```` ```sh readme-test ```` — run with bash (``set -euo pipefail``), in order, in one temporary
  directory per file that holds ``cat.png`` (768x768), a copy of ``configs/`` and ``tests/`` (a link to the
  repository's, for the tiny checkpoints);
* ```` ```yaml readme-file=NAME ```` (any language) — written to NAME in that directory first.

Every ``sh`` block of those files that runs a foundation command (``kandinsky mask|grid|batch``) must be opted
in; the model commands (``prior``, ``inpaint``) are opted in the same way once they exist.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
FOUNDATION = re.compile(r"\bkandinsky\s+(mask|grid|batch)\b")


# files a file's tested blocks must have written (in its directory), beyond their exit status
OUTPUTS = {
    "README.md": ("mask.png", "mask.npy", "keep.png", "grid.png", "embeds/prior.image_embeds.npy", "hat.png",
                  "hats-1.png", "hats-2.png", "hats-grid.png"),
    "docs/batch.md": ("mask.png", "small-out/hat.png", "small-out/crown.png", "small-out/manifest.jsonl", "rerun.json"),
    "docs/real-photos.md": ("region-mask.png",),
}


def blocks(path=README):
    """(info words, body) of every fenced block of one file, in order."""
    return [(m.group(1).split(), m.group(2)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def name(path):
    return path.relative_to(REPO).as_posix()


def test_setup_and_test_commands_match_ci():
    text = README.read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8") if (REPO / ".ci" / "run").exists() else None
    setup = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]'"
    for command in (setup, "python -m pytest -q"):
        assert f"\n{command}\n" in text, command
    if ci is not None:
        assert "pip install -e '.[test]'" in ci and "python -m pytest -q" in ci


@pytest.mark.parametrize("path", DOCS, ids=name)
def test_every_foundation_command_is_tested(path):
    for info, body in blocks(path):
        if info and info[0] in ("sh", "bash", "console", "shell") and FOUNDATION.search(body):
            assert "readme-test" in info, f"{name(path)} block not opted in to testing:\n{body}"


def test_expected_outputs_name_existing_files():
    assert set(OUTPUTS) <= {name(path) for path in DOCS}


@pytest.mark.parametrize("path", DOCS, ids=name)
def test_readme_commands_run(tmp_path, path):
    cat = Image.open(REPO / "configs" / "examples" / "cat.png").convert("RGB")
    cat.resize((768, 768), Image.Resampling.BICUBIC).save(tmp_path / "cat.png")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "tests").symlink_to(REPO / "tests")  # README commands use the tiny test checkpoints
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    ran = 0
    for info, body in blocks(path):
        for word in info:
            if word.startswith("readme-file="):
                (tmp_path / word.split("=", 1)[1]).write_text(body, encoding="utf-8")
    for info, body in blocks(path):
        if "readme-test" not in info:
            continue
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{name(path)} block failed:\n{body}\n--- stdout\n{result.stdout}\n" \
                                       f"--- stderr\n{result.stderr}"
        ran += 1
    if path == README:
        assert ran >= 3
    for output in OUTPUTS.get(name(path), ()):
        assert (tmp_path / output).is_file(), f"{name(path)}: {output}"
