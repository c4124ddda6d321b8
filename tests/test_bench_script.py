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
    for name in ("unet-step-256", "unet-step-768", "movq-decode-768", "prior-step", "pipeline-tiny-64-10"):
        assert name in proc.stdout
    proc = run_bench("--workload", "no-such-row", "--json", timeout=60)
    assert proc.returncode != 0 and "unknown workload" in proc.stderr
    assert proc.stdout == ""
