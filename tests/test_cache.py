"""The tool's cache: per-model constants and the compile cache (reused graphs give the same results, graphs of
other shapes or models are never taken for them, damaged entries are rebuilt, concurrent processes are safe)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE
from kandinsky_cli import cache

PROBE = Path(__file__).parent / "compile_cache_probe.py"


def probe(cache_root: Path, width: int, rows: str, wait: bool = True):
    env = {**os.environ, cache.CACHE_VARIABLE: str(cache_root), "GLOG_v": "3"}
    proc = subprocess.Popen([sys.executable, str(PROBE), str(width), rows], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    return finish(proc)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def graph_files(cache_root: Path):
    return sorted(cache_root.glob("compile/*/rank_0/graph_cache/*.mindir"))


def test_cache_dir_follows_the_variables(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_VARIABLE, str(tmp_path / "k"))
    assert cache.cache_dir() == tmp_path / "k"
    monkeypatch.delenv(cache.CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "x" / "kandinsky"


def test_constants_are_computed_once_and_damage_is_rebuilt(tmp_path):
    constants = cache.Constants(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return np.arange(4, dtype=np.float32)

    key = {"weights": "w1", "dtype": "float32"}
    assert np.array_equal(constants.get("c", key, compute), np.arange(4))
    assert np.array_equal(cache.Constants(tmp_path).get("c", key, compute), np.arange(4))
    assert len(calls) == 1
    cache.Constants(tmp_path).get("c", {"weights": "w2", "dtype": "float32"}, compute)   # other weights: recomputed
    assert len(calls) == 2
    path = constants.path("c", key)
    for damage in (b"", b"\x93NUMPY garbage", path.read_bytes()[:-3]):
        path.write_bytes(damage)
        assert np.array_equal(cache.Constants(tmp_path).get("c", key, compute), np.arange(4))
    assert len(calls) == 5


def test_weights_identity_changes_with_the_weights(tmp_path):
    import shutil

    folder = tmp_path / "enc"
    shutil.copytree(FIXTURE / "prior" / "image_encoder", folder)
    first = cache.weights_identity(folder)
    assert cache.weights_identity(folder) == first
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10 ** 9))
    assert cache.weights_identity(folder) != first


def test_compiled_graphs_are_reused_only_for_the_same_inputs(tmp_path):
    first = probe(tmp_path, 8, "2,3")
    assert first == {**first, "ok": [True, True], "state": "write"}
    files = {p: p.stat().st_mtime_ns for p in graph_files(tmp_path)}
    assert len(files) == 2
    assert probe(tmp_path, 8, "2,3")["state"] == "read"
    assert {p: p.stat().st_mtime_ns for p in graph_files(tmp_path)} == files     # loaded, not written again
    # MindSpore alone would hand the cached (2, 8) -> (3, 8) graph to the 5-row call: the cache turns itself off
    other = probe(tmp_path, 8, "2,5")
    assert other["ok"] == [True, True] and other["state"] == "off"
    longer = probe(tmp_path, 8, "2,3,5")               # more compiles than recorded: the entry is extended
    assert longer["ok"] == [True, True, True] and longer["state"] == "write"
    assert probe(tmp_path, 8, "2,3,5") == {**longer, "state": "read"}
    wider = probe(tmp_path, 16, "2,3")                 # another network: another entry
    assert wider["ok"] == [True, True] and wider["entry"] != first["entry"]


@pytest.mark.parametrize("damage", ["truncate", "delete", "sequence"])
def test_a_damaged_entry_is_rebuilt(tmp_path, damage):
    first = probe(tmp_path, 8, "2,3")
    entry = Path(first["entry"])
    target = graph_files(tmp_path)[0]
    target.chmod(0o600)
    if damage == "truncate":
        os.truncate(target, 40)
    elif damage == "delete":
        target.unlink()
    else:
        (entry / "sequence.json").write_text("{not json")
    again = probe(tmp_path, 8, "2,3")
    assert again["ok"] == [True, True] and again["state"] == "write"
    assert probe(tmp_path, 8, "2,3")["state"] == "read"


def test_concurrent_processes_share_an_entry_safely(tmp_path):
    procs = [probe(tmp_path, 8, "2,3", wait=False) for _ in range(3)]
    results = [finish(p) for p in procs]
    assert all(r["ok"] == [True, True] for r in results)
    assert sum(r["state"] == "write" for r in results) <= 1     # one writer; the others read or compile alone
    assert probe(tmp_path, 8, "2,3")["state"] == "read"


def test_the_compile_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.COMPILE_CACHE_VARIABLE, "0")
    result = probe(tmp_path, 8, "2,3")
    assert result["ok"] == [True, True] and result["state"] == "unset" and not graph_files(tmp_path)


def test_a_text_only_prior_run_loads_no_image_encoder_once_the_constant_is_cached(tmp_path, monkeypatch):
    from kandinsky_cli.core import Kandinsky, PriorRequest

    monkeypatch.setenv(cache.CACHE_VARIABLE, str(tmp_path))
    request = PriorRequest({"prompt": "a hat", "prior_steps": 2, "prior_guidance_scale": 4.0, "num_images": 1,
                            "seed": 3, "negative_prompt": None})
    results = []
    for _ in range(2):
        engine = Kandinsky(prior_model=str(FIXTURE / "prior"), dtype="float32", mode="pynative")
        results.append(engine.run_prior(request))
        results.append(engine._prior.image_encoder is not None)
    emb1, loaded1, emb2, loaded2 = results
    assert loaded1 and not loaded2
    for a, b in zip(emb1, emb2):
        assert np.array_equal(a, b)


def test_a_second_cli_run_reuses_the_graphs_with_identical_pixels(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    env = {**os.environ, cache.CACHE_VARIABLE: str(tmp_path / "cache")}
    outputs = []
    for k in range(2):
        out = tmp_path / f"out{k}.png"
        subprocess.run([sys.executable, "-m", "kandinsky_cli", "inpaint", str(tmp_path / "in.png"),
                        "--mask-rect", "0:30,0:40", "--prompt", "a hat", "--seed", "5", "--steps", "2",
                        "--prior-steps", "2", "--resolution", "64", "--prior-model", str(FIXTURE / "prior"),
                        "--decoder-model", str(FIXTURE / "inpaint"), "--out", str(out)],
                       env=env, check=True, capture_output=True, timeout=600)
        outputs.append(np.asarray(Image.open(out)))
        if k == 0:
            files = {p: p.stat().st_mtime_ns for p in graph_files(tmp_path / "cache")}
            assert len(files) >= 3       # MoVQ encode, UNet, MoVQ decode
    assert np.array_equal(outputs[0], outputs[1])
    assert {p: p.stat().st_mtime_ns for p in graph_files(tmp_path / "cache")} == files
