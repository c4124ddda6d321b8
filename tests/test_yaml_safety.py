"""kandinsky_cli.yamlsafe: hostile YAML is refused quickly with one clear line; ordinary YAML loads as
``yaml.safe_load`` loads it."""
import textwrap
import time

import pytest
import yaml
from typer.testing import CliRunner

from kandinsky_cli import yamlsafe
from kandinsky_cli.batchfile import load_batch
from kandinsky_cli.cli import app
from kandinsky_cli.errors import UserError
from kandinsky_cli.yamlsafe import MAX_ALIASES, MAX_BYTES, MAX_DEPTH, load_yaml_bounded


def write(tmp_path, content, name="jobs.yaml"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def assert_refused(path, *fragments, load=load_yaml_bounded):
    """A UserError within a second: one line, naming the file and every fragment."""
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        load(path)
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert elapsed < 1.0, f"refused after {elapsed:.2f} s: {message}"
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def laughs(levels, width, style="flow"):
    """The "billion laughs": each level lists the previous one ``width`` times (width ** levels strings)."""
    lines = [f"l0: &l0 {'[' + ', '.join(['lol'] * width) + ']' if style == 'flow' else 'lol'}"]
    for level in range(1, levels + 1):
        aliases = [f"*l{level - 1}"] * width
        if style == "flow":
            lines.append(f"l{level}: &l{level} [{', '.join(aliases)}]")
        else:
            lines.append(f"l{level}: &l{level}\n" + "".join(f"  - {a}\n" for a in aliases).rstrip("\n"))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ alias bombs

@pytest.mark.parametrize("levels, width, style", [(9, 9, "flow"), (9, 9, "block"), (30, 2, "flow"),
                                                  (4, 25, "flow")])
def test_billion_laughs(tmp_path, levels, width, style):
    path = write(tmp_path, laughs(levels, width, style))
    assert_refused(path, "aliases (*name)")


def test_too_many_aliases_even_if_small(tmp_path):
    items = "".join("  - *a\n" for _ in range(MAX_ALIASES + 1))
    assert_refused(write(tmp_path, f"x: &a 1\ny:\n{items}"), f"more than {MAX_ALIASES} aliases",
                   f"line {MAX_ALIASES + 3},")


def test_merge_key_bomb(tmp_path):
    """Laughs through '<<' merge keys: each mapping merges the previous one nine times."""
    text = "m0: &m0 {k: v}\n"
    for level in range(1, 10):
        text += f"m{level}: &m{level} {{<<: [{', '.join([f'*m{level - 1}'] * 9)}], k{level}: v}}\n"
    assert_refused(write(tmp_path, text), "aliases (*name)")


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {b: *a}\n", "- &x\n  - [1, *x]\n"])
def test_recursive_alias(tmp_path, text):
    assert_refused(write(tmp_path, text), "refers to a node that contains it")


def test_a_few_aliases_and_merges_load_as_safe_load(tmp_path):
    text = textwrap.dedent("""\
        base: &base {steps: 30, guidance_scale: 4.0}
        rects: &rects ["0:10,0:10"]
        jobs:
          - {<<: *base, image: a.png, mask_rects: *rects, prompt: x}
          - <<: *base
            image: b.png
            steps: 7
            mask_rects: *rects
            prompt: y
        """)
    path = write(tmp_path, text)
    assert load_yaml_bounded(path) == yaml.safe_load(text)
    items = "".join("  - *a\n" for _ in range(MAX_ALIASES))
    text = f"x: &a [1, 2]\ny:\n{items}"
    assert load_yaml_bounded(write(tmp_path, text, "limit.yaml")) == yaml.safe_load(text)


# ------------------------------------------------------------------------------------------ nesting

@pytest.mark.parametrize("text", [
    "[" * 100_000,                                                  # flow lists, never closed
    "[" * 40 + "]" * 40,                                            # flow lists, closed
    "{a: " * 100_000,                                               # flow mappings
    "- " * 100_000 + "x\n",                                         # block lists on one line
    "".join(" " * i + "k:\n" for i in range(40)) + " " * 40 + "v\n",  # block mappings by indentation
    "[{a: " * 50_000,                                               # flow lists of mappings
    "".join("  " * i + "- k:\n" for i in range(20)) + "  " * 20 + "- v\n",  # block lists of mappings
], ids=["flow-lists", "flow-lists-closed", "flow-dicts", "block-lists", "block-dicts", "flow-mixed",
        "block-mixed"])
def test_deep_nesting(tmp_path, text):
    assert_refused(write(tmp_path, text), f"nested deeper than {MAX_DEPTH} levels")


def test_depth_limit_is_exact(tmp_path):
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_yaml_bounded(write(tmp_path, ok)) == yaml.safe_load(ok)
    assert_refused(write(tmp_path, "[" + ok + "]", "deeper.yaml"), "line 1, column 33:")


# ------------------------------------------------------------------------------------------ duplicate keys

def test_duplicate_key_in_a_job_through_load_batch(tmp_path):
    text = textwrap.dedent("""\
        defaults:
          steps: 3
        jobs:
          - image: a.png
            prompt: a hat
            mask_rects: ["0:1,0:1"]
            prompt: a cap
        """)
    path = write(tmp_path, text)
    message = assert_refused(path, load=load_batch)
    assert message == f"{path}: line 7: duplicate key 'prompt' (first at line 5)"


@pytest.mark.parametrize("text, key, line, first", [
    ("jobs: []\ndefaults: {}\njobs: []\n", "jobs", 3, 1),
    ("defaults:\n  steps: 3\n  seed: 1\n  steps: 4\njobs: []\n", "steps", 4, 2),
    ("jobs:\n  - {image: a.png, prompt: x, image: b.png}\n", "image", 2, 2),
    ("a: 1\n'a': 2\n", "a", 2, 1),                    # quoting does not make another key
    ("yes: 1\ntrue: 2\n", True, 2, 1),                # YAML 1.1 booleans: the same key
    ("1: a\n0x1: b\n", 1, 2, 1),                      # the same integer
])
def test_duplicate_keys(tmp_path, text, key, line, first):
    path = write(tmp_path, text)
    assert_refused(path, f"line {line}: duplicate key {key!r} (first at line {first})")


def test_same_key_in_different_mappings_is_fine(tmp_path):
    text = "jobs:\n  - {image: a.png, prompt: x}\n  - {image: b.png, prompt: y}\ndefaults: {prompt: z}\n"
    assert load_yaml_bounded(write(tmp_path, text)) == yaml.safe_load(text)


# ------------------------------------------------------------------------------------------ tags, bytes, size

@pytest.mark.parametrize("text, tag", [
    ("jobs:\n  - !!python/object/apply:os.system ['echo hacked']\n", "!!python/object/apply:os.system"),
    ("a: !!python/object:builtins.object {}\n", "!!python/object:builtins.object"),
    ("a: !!binary aGVsbG8=\n", "!!binary"),
    ("a: !!set {x, y}\n", "!!set"),
    ("a: !custom 1\n", "!custom"),
    ("a: !!str 1\n", "!!str"),
])
def test_tags_are_refused(tmp_path, text, tag):
    assert_refused(write(tmp_path, text), "invalid YAML at line", f"tag {tag} is not allowed")


def test_not_utf8(tmp_path):
    path = write(tmp_path, b"jobs:\n  - prompt: caf\xe9\n")
    assert_refused(path, "cannot read YAML file", "not UTF-8", "byte 0xe9 at line 2, column 16")
    assert_refused(write(tmp_path, b"\xff\xfe\x00bad", "bom.yaml"), "not UTF-8")


def test_nul_byte(tmp_path):
    path = write(tmp_path, "jobs:\n  - prompt: a\x00b\n")
    assert_refused(path, "invalid YAML at line 2, column 14", "#x0000")


def test_two_mib_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = write(tmp_path, "#" * (2 * 1024 * 1024 - 1) + "\n")

    def no_open(*args, **kwargs):
        raise AssertionError("a file larger than the limit was opened")
    monkeypatch.setattr(yamlsafe, "open", no_open, raising=False)  # shadows the built-in in yamlsafe
    assert_refused(path, "too large", str(MAX_BYTES))


def test_size_limit_is_exact_and_the_read_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(yamlsafe, "MAX_BYTES", 100)
    assert load_yaml_bounded(write(tmp_path, "a: " + "x" * 96 + "\n")) == {"a": "x" * 96}
    assert_refused(write(tmp_path, "a: " + "x" * 97 + "\n", "101.yaml"), "too large", "100 bytes")
    assert_refused("/dev/zero", "too large")  # a file whose size stat() does not know


@pytest.mark.parametrize("text, fragment", [
    ("a: 2001-13-45\n", "cannot read '2001-13-45': month must be in 1..12"),
    ("a: " + "1" * 5000 + "\n", "digits"),
    ("jobs:\n  - image: [unclosed\n", "invalid YAML at line 3, column 1"),
    ("a: 1\n---\nb: 2\n", "expected a single document"),
    ("a: *nowhere\n", "undefined alias"),
])
def test_other_bad_yaml(tmp_path, text, fragment):
    assert_refused(write(tmp_path, text), fragment)


def test_missing_and_unreadable(tmp_path):
    assert_refused(tmp_path / "nope.yaml", "YAML file not found")
    with pytest.raises(UserError, match="cannot read batch file .*: Is a directory"):
        load_yaml_bounded(tmp_path, "batch file")


# ------------------------------------------------------------------------------------------ the command line

@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000, "nested deeper"),
    (laughs(9, 9), "aliases (*name)"),
    ("jobs: []\njobs: []\n", "duplicate key 'jobs'"),
])
def test_batch_command_prints_one_line(tmp_path, text, fragment):
    path = write(tmp_path, text)
    result = CliRunner().invoke(app, ["batch", str(path), "--check"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output
