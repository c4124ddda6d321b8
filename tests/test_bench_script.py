"""Smoke test of scripts/bench.py: the tiny pipeline row, MindSpore only, JSON lines out. Never asserts speed."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench.py"
REQUIRED = ("workload", "impl", "dtype", "median_s", "min_s", "max_s", "peak_rss_gb")


def run_bench(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_bench_json_rows_tiny_pipeline():
    # --no-torch: the same rows whether or not torch/diffusers happen to be installed (CI has neither)
    proc = run_bench("--workload", "pipeline-tiny-64-10", "--repeats", "1", "--warmup", "1", "--json", "--no-torch",
                     "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output rows; stderr:\n{proc.stderr[-3000:]}"
    rows = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    for row in rows:
        assert all(key in row for key in REQUIRED), row
        assert "skipped" not in row, row
        assert row["workload"] == "pipeline-tiny-64-10"
        assert row["impl"] == "mindspore"
        assert row["dtype"] == "float32"
        assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["peak_rss_gb"] is None or row["peak_rss_gb"] > 0
    assert len(rows) == 1


def test_bench_list_and_bad_workload():
    proc = run_bench("--list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("unet-step-256", "unet-step-768", "movq-decode-768", "prior-step", "prior-step-cached",
                 "pipeline-tiny-64-10"):
        assert name in proc.stdout
    proc = run_bench("--workload", "no-such-row", "--json", timeout=60)
    assert proc.returncode != 0 and "unknown workload" in proc.stderr
    assert proc.stdout == ""


def test_bench_list_shows_whole_tool_and_convergence_rows():
    proc = run_bench("--list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("tool-768-default", "tool-region-4000x3000-full", "tool-region-4000x3000-mask",
                 "sampler-convergence-tiny"):
        assert f"{name}  (off by default)" in proc.stdout
    # the mask rectangles of the tool rows: the README's example at 768x768, a 300x300 square in 4000x3000
    assert "--mask-rect 0:250,250:518" in proc.stdout
    assert "--mask-rect 1200:1500,2000:2300" in proc.stdout


def test_bench_tool_row_without_pipeline_dir_is_skipped_with_its_reason():
    proc = run_bench("--workload", "tool-768-default", "--json", "--no-torch", "--dtype", "float32", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["workload"], row["impl"], row["dtype"]) == ("tool-768-default", "mindspore", "float32")
    assert "--pipeline-dir" in row["skipped"]
    assert row["median_s"] is None and row["repeats"] == 0
    proc = run_bench("--workload", "tool-768-default", "--no-torch", "--dtype", "float32", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped [1]" in proc.stdout
    assert "[1] tool-768-default mindspore float32: needs --pipeline-dir" in " ".join(proc.stdout.split())


def test_run_command_gives_each_child_its_own_peak_rss_and_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from bench_common import run_command

    big = "import json; block = b'x' * (200 * 2**20); print(json.dumps({'timings': {'prior_s': 1.5}}))"
    done = run_command([sys.executable, "-c", big], tmp_path / "big.txt")
    assert done.error is None, done.error
    assert done.output == {"timings": {"prior_s": 1.5}}
    assert done.peak_rss > 200 * 2**20
    small = run_command([sys.executable, "-c", "print('{}')"], tmp_path / "small.txt")
    assert small.output == {}
    assert small.peak_rss < 150 * 2**20  # its own peak, not the largest of every child so far


def test_run_command_reports_a_failure_by_its_last_stderr_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from bench_common import run_command

    code = "import sys; print('loading', file=sys.stderr); sys.exit('error: No such option: --region')"
    done = run_command([sys.executable, "-c", code], tmp_path / "err.txt")
    assert done.output is None
    assert done.error == "exit code 1: error: No such option: --region"


class _FakeCell:
    """parameters_and_names() of a network with a norm, a linear layer and a 3x3 convolution."""

    SHAPES = {"norm.weight": (64,), "norm.bias": (64,), "proj.weight": (256, 64), "proj.bias": (256,),
              "conv.weight": (128, 32, 3, 3)}

    def parameters_and_names(self):
        from types import SimpleNamespace

        return [(name, SimpleNamespace(shape=shape)) for name, shape in self.SHAPES.items()]


def test_random_weights_norms_one_biases_zero_matrices_scaled_by_fan_in(monkeypatch):
    import numpy as np

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from random_weights import random_weights

    weights = dict(random_weights(_FakeCell(), np.random.default_rng(0)))
    assert list(weights) == list(_FakeCell.SHAPES)
    assert all(a.dtype == np.float32 and a.shape == _FakeCell.SHAPES[k] for k, a in weights.items())
    assert np.all(weights["norm.weight"] == 1) and np.all(weights["norm.bias"] == 0)
    assert np.all(weights["proj.bias"] == 0)
    assert abs(weights["proj.weight"].std() - 64 ** -0.5) < 0.05 * 64 ** -0.5
    assert abs(weights["conv.weight"].std() - (32 * 9) ** -0.5) < 0.05 * (32 * 9) ** -0.5
    again = dict(random_weights(_FakeCell(), np.random.default_rng(0)))
    other = dict(random_weights(_FakeCell(), np.random.default_rng(1)))
    assert np.array_equal(again["conv.weight"], weights["conv.weight"])
    assert not np.array_equal(other["conv.weight"], weights["conv.weight"])
    fixed = dict(random_weights(_FakeCell(), np.random.default_rng(0), std=0.02))
    assert abs(fixed["proj.weight"].std() - 0.02) < 0.001
