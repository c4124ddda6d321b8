"""`kandinsky batch` running jobs on the tiny fixture: one engine, cached prior, resume, failures, manifest,
shards, folder mode, interrupts and msrun.

One batch (module fixture) is run once into OUT-DIR ``A``; the later tests rerun it, compare with single
`kandinsky inpaint` runs and with sharded runs. Everything is 64x64 (one job 64x128) with 2 steps.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURE, invoke_cli
from kandinsky_cli.batch import (Interrupts, Manifest, OutputLock, Shard, derive_seed, is_msrun_scheduler,
                                 parse_shard, read_manifest, shard_from_env)
from kandinsky_cli.batchfile import load_batch
from kandinsky_cli.cli import app
from kandinsky_cli.errors import UserError
from kandinsky_cli.files import read_png_metadata

PRIOR = str(FIXTURE / "prior")
DECODER = str(FIXTURE / "inpaint")
# pynative: what is tested here (resume, shards, manifests, equal pixels between runs) does not depend on the
# mode, and a tiny run is ~2.5x faster without graph compilation; a graph-mode batch: the README example
# (test_readme.py)
MODELS = ["--prior-model", PRIOR, "--decoder-model", DECODER, "--mode", "pynative"]
TINY = ["--steps", "2", "--prior-steps", "2", "--height", "64", "--width", "64"]

JOBS = """\
defaults: {steps: 2, prior_steps: 2, height: 64, width: 64}
jobs:
  - {image: in/a.png, mask_rects: ["10:40,20:50"], prompt: a hat, seed: 5, out: a-rect.png}
  - {image: in/a.png, mask: in/a_mask.png, prompt: a hat, seed: 5, out: a-mask.png}
  - {image: in/b.png, mask_rects: ["0:30,:"], prompt: a crown, width: 128}
  - {image: in/a.png, mask_rects: [":20,:"], prompt: a scarf, seed: 7, out: a-scarf.png,
     image_embeds: in/scarf.image_embeds.npy, negative_image_embeds: in/scarf.negative_image_embeds.npy}
  - {image: in/broken.png, mask_rects: ["0:10,0:10"], prompt: a hat, seed: 5, out: broken.png}
"""
OUTPUTS = ["a-rect.png", "a-mask.png", "b.png", "a-scarf.png"]


run = invoke_cli   # conftest: the CLI in this process, exit code checked


def pixels(path):
    return np.asarray(Image.open(path))


def pngs(folder):
    return sorted(p.name for p in Path(folder).glob("*.png"))


def assert_same_images(a, b, names=None):
    """Folder ``a`` holds the PNGs ``names`` (default: those of ``b``), with the pixels of ``b``'s."""
    names = pngs(b) if names is None else names
    assert pngs(a) == names
    for name in names:
        np.testing.assert_array_equal(pixels(Path(a) / name), pixels(Path(b) / name), err_msg=name)


def kandinsky_command():
    """The console script next to this python (what users run), else ``python -m kandinsky_cli``."""
    script = Path(sys.executable).with_name("kandinsky")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kandinsky_cli"]


def subprocess_env():
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    (d / "in").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(d / "in" / "a.png")
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(d / "in" / "b.png")
    mask = np.zeros((80, 72), np.uint8)
    mask[20:50, 10:40] = 255
    Image.fromarray(mask).save(d / "in" / "a_mask.png")
    (d / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    run("prior", "a scarf", "--model", PRIOR, "--steps", 2, "--seed", 7, "--out-dir", d / "in", "--name", "scarf")
    (d / "jobs.yaml").write_text(JOBS)
    result = run("batch", d / "jobs.yaml", "--out-dir", d / "A", *MODELS, "--json", code=1)
    return SimpleNamespace(dir=d, yaml=d / "jobs.yaml", out=d / "A", result=result,
                           summary=json.loads(result.stdout))


def test_batch_runs_every_job_with_models_loaded_once(batch):
    summary = batch.summary
    assert summary["counters"] == {"prior_loads": 1, "decoder_loads": 1, "decoder_runs": 4,
                                   "prior_runs": 2,   # "a hat"/5 once for two jobs, "a crown" once, embeds: none
                                   "text_encoder_loads": 1}   # every job's texts encoded with one load
    status = {job["index"]: job["status"] for job in summary["jobs"]}
    assert status == {0: "done", 1: "done", 2: "done", 3: "done", 4: "failed"}
    assert summary["counts"] == {"done": 4, "skipped": 0, "failed": 1, "total": 5}
    assert pngs(batch.out) == sorted(OUTPUTS)
    failed = summary["jobs"][4]
    assert "cannot read image" in failed["reason"] and "broken.png" in failed["reason"]
    assert failed["outputs"] == []
    # the summary table (on stderr with --json) names the failed job and its reason
    assert "failed" in batch.result.stderr and "broken.png" in batch.result.stderr
    assert Image.open(batch.out / "b.png").size == (96, 64) and Image.open(batch.out / "a-rect.png").size == (72, 80)


def test_outputs_equal_single_inpaint_runs(batch, tmp_path):
    d = batch.dir
    seed = batch.summary["jobs"][2]["seed"]
    assert seed == derive_seed(0, 2) and batch.summary["jobs"][2]["seed_source"] == "derived"
    run("inpaint", d / "in" / "a.png", "--mask", d / "in" / "a_mask.png", "--prompt", "a hat", "--seed", 5, *TINY,
        *MODELS, "--out", tmp_path / "one.png")
    np.testing.assert_array_equal(pixels(tmp_path / "one.png"), pixels(batch.out / "a-mask.png"))
    run("inpaint", d / "in" / "b.png", "--mask-rect", "0:30,:", "--prompt", "a crown", "--seed", seed, *TINY,
        "--width", 128, *MODELS, "--out", tmp_path / "two.png")
    np.testing.assert_array_equal(pixels(tmp_path / "two.png"), pixels(batch.out / "b.png"))
    assert read_png_metadata(batch.out / "b.png")["parameters"]["seed"] == seed


def test_manifest_lines(batch):
    lines = (batch.out / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 5
    # jobs of one working size run together: the 64x128 job last, the others in file order
    assert [r["job"] for r in records] == [0, 1, 3, 4, 2]
    done = {r["job"]: r for r in records if r["status"] == "done"}
    assert {Path(r["output"]).name for r in done.values()} == set(OUTPUTS)
    for r in done.values():
        assert Path(r["output"]).is_file() and r["output_index"] == 1
        assert r["seed"] == r["parameters"]["seed"] == read_png_metadata(r["output"])["parameters"]["seed"]
        assert r["parameters"]["steps"] == 2 and r["parameters"]["height"] == 64
        assert r["shard"] == {"rank": 0, "size": 1} and r["timings"]["job_s"] > 0
        assert r["image"].endswith(".png") and Path(r["image"]).is_absolute()
    assert done[0]["seed"] == 5 and done[0]["seed_source"] == "job"
    assert done[2]["seed"] == derive_seed(0, 2) and done[2]["seed_source"] == "derived"
    assert done[1]["mask"].endswith("a_mask.png") and done[0]["mask_rects"] == ["10:40,20:50"]
    assert done[3]["parameters"]["image_embeds"].endswith("scarf.image_embeds.npy")
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["job"] == 4 and failed["output"] is None and "cannot read image" in failed["reason"]


def test_rerun_skips_everything(batch):
    manifest = batch.out / "manifest.jsonl"
    before = manifest.read_text().splitlines()
    mtimes = {name: (batch.out / name).stat().st_mtime_ns for name in OUTPUTS}
    result = run("batch", batch.yaml, "--out-dir", batch.out, *MODELS, "--json", code=1)
    summary = json.loads(result.stdout)
    assert summary["counters"] == {"prior_loads": 0, "decoder_loads": 0, "prior_runs": 0, "decoder_runs": 0,
                                   "text_encoder_loads": 0}
    assert [job["status"] for job in summary["jobs"]] == ["skipped"] * 4 + ["failed"]
    assert {name: (batch.out / name).stat().st_mtime_ns for name in OUTPUTS} == mtimes
    after = manifest.read_text().splitlines()
    assert after[:len(before)] == before
    assert [json.loads(line)["status"] for line in after[len(before):]] == ["failed"]   # only the broken job


def test_deleting_an_output_regenerates_only_it(batch):
    target = batch.out / "a-scarf.png"
    old = pixels(target)
    target.unlink()
    mtimes = {name: (batch.out / name).stat().st_mtime_ns for name in OUTPUTS if name != target.name}
    summary = json.loads(run("batch", batch.yaml, "--out-dir", batch.out, *MODELS, "--json", code=1).stdout)
    # the job brings its own embeddings: the prior is not even loaded
    assert summary["counters"] == {"prior_loads": 0, "decoder_loads": 1, "prior_runs": 0, "decoder_runs": 1,
                                   "text_encoder_loads": 1}
    assert [job["status"] for job in summary["jobs"]] == ["skipped", "skipped", "skipped", "done", "failed"]
    np.testing.assert_array_equal(pixels(target), old)
    assert {name: (batch.out / name).stat().st_mtime_ns for name in mtimes} == mtimes


def test_a_shard_runs_its_jobs_with_the_pixels_of_the_unsharded_run(batch):
    """--shard 1/2: jobs 1 and 3 only, the same files and pixels as the unsharded run. (Both shards together into
    one folder, appending to one manifest: the msrun test.)"""
    out = batch.dir / "B"
    s1 = json.loads(run("batch", batch.yaml, "--out-dir", out, "--shard", "1/2", *MODELS, "--json").stdout)
    assert [j["index"] for j in s1["jobs"]] == [1, 3]
    assert s1["shard"] == {"rank": 1, "size": 2, "source": "--shard", "device_id": None}
    assert_same_images(out, batch.out, ["a-mask.png", "a-scarf.png"])
    records = read_manifest(out / "manifest.jsonl")
    assert {(r["job"], r["status"], r["shard"]["rank"], r["shard"]["size"]) for r in records} == \
        {(1, "done", 1, 2), (3, "done", 1, 2)}


def test_folder_mode_with_a_masks_folder(batch):
    d = batch.dir
    (d / "imgs").mkdir()
    (d / "masks").mkdir()
    for name in ("a.png", "b.png"):
        (d / "imgs" / name).write_bytes((d / "in" / name).read_bytes())
    (d / "masks" / "a.png").write_bytes((d / "in" / "a_mask.png").read_bytes())   # none for b.png
    result = run("batch", "--images", d / "imgs", "--masks", d / "masks", "--prompt", "a hat", "--seed", 5,
                 "--num-images", 2, *TINY, "--out-dir", d / "F1", *MODELS, "--json", code=1)
    summary = json.loads(result.stdout)
    assert [j["status"] for j in summary["jobs"]] == ["done", "failed"]
    assert "no mask for b.png" in summary["jobs"][1]["reason"]
    assert pngs(d / "F1") == ["a-1.png", "a-2.png"]
    records = read_manifest(d / "F1" / "manifest.jsonl")
    assert [(r["status"], r["output_index"]) for r in records] == [("done", 1), ("done", 2), ("failed", None)]
    assert records[0]["mask"] == str((d / "masks" / "a.png").resolve())


def test_folder_mode_with_rectangles_equals_the_batch_file(batch):
    d = batch.dir
    run("batch", "--images", d / "imgs", "--mask-rect", "10:40,20:50", "--prompt", "a hat", "--seed", 5, *TINY,
        "--out-dir", d / "F2", *MODELS)
    assert pngs(d / "F2") == ["a.png", "b.png"]
    # the same settings as job 0 of the batch file: the same pixels
    np.testing.assert_array_equal(pixels(d / "F2" / "a.png"), pixels(batch.out / "a-rect.png"))


def test_msrun_two_workers_produce_the_full_set(batch, tmp_path):
    msrun = Path(sys.executable).with_name("msrun")
    if not msrun.exists():
        pytest.skip("msrun is not installed next to this python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, logs = batch.dir / "C", tmp_path / "msrun-logs"
    script = Path(sys.executable).with_name("kandinsky")
    result = subprocess.run([str(msrun), "--worker_num=2", "--local_worker_num=2", f"--master_port={port}",
                             "--join=True", f"--log_dir={logs}", str(script), "batch", str(batch.yaml),
                             "--out-dir", str(out), "--shard", "auto", *MODELS],
                            cwd=batch.dir, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    worker_logs = {p.name: p.read_text() for p in logs.glob("*.log")}
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:], worker_logs)
    assert_same_images(out, batch.out)
    assert "nothing to do here" in worker_logs["scheduler.log"]
    # worker 0 had the broken job: it is reported, but the worker exits 0 so that msrun keeps the others
    assert "failed" in worker_logs["worker_0.log"] and "exits with code 0" in worker_logs["worker_0.log"]
    records = read_manifest(out / "manifest.jsonl")
    assert sorted(r["job"] for r in records if r["status"] == "done") == [0, 1, 2, 3]
    assert {(r["job"], r["shard"]["rank"]) for r in records} == {(0, 0), (1, 1), (2, 0), (3, 1), (4, 0)}


def test_sigterm_stops_promptly_and_writes_nothing_partial(tmp_path, batch):
    (tmp_path / "jobs.yaml").write_text(textwrap.dedent(f"""\
        defaults: {{steps: 2, prior_steps: 2, height: 64, width: 64, seed: 3}}
        jobs:
          - {{image: {batch.dir}/in/broken.png, mask_rects: ["0:10,0:10"], prompt: x, out: x.png}}
          - {{image: {batch.dir}/in/a.png, mask_rects: ["0:10,0:10"], prompt: y, out: y.png}}
        """))
    proc = subprocess.Popen([*kandinsky_command(), "batch", str(tmp_path / "jobs.yaml"), "--out-dir",
                             str(tmp_path / "out"), *MODELS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    for line in proc.stderr:   # job 1 (the broken image) fails at once; then the models load for job 2
        seen.append(line)
        if "failed" in line:
            break
    proc.send_signal(signal.SIGTERM)
    t0 = time.perf_counter()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (seen, stdout, stderr)
    assert time.perf_counter() - t0 < 60
    assert "interrupted after 1 of 2 jobs: wrote no output, 1 line(s) of the manifest" in stderr
    assert stderr.rstrip().endswith("rerun the same command to finish (finished outputs are kept and skipped)")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["manifest.jsonl"]   # no output, no temporary file
    assert [r["status"] for r in read_manifest(tmp_path / "out" / "manifest.jsonl")] == ["failed"]


def _tiny_images(folder, count):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_batch_says_what_it_wrote(tmp_path, sig):
    """Stopped after two finished jobs: exit 130, and the last line names exactly the files on disk."""
    _tiny_images(tmp_path / "imgs", 6)
    out = tmp_path / "out"
    proc = subprocess.Popen([*kandinsky_command(), "batch", "--images", str(tmp_path / "imgs"), "--mask-rect",
                             "0:20,0:20", "--prompt", "x", "--seed", "1", *TINY, "--out-dir", str(out), *MODELS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if sum(" done: " in s for s in seen) == 2:
            break
    proc.send_signal(sig)
    stdout, rest = proc.communicate(timeout=120)
    lines = [line for line in (seen + rest.splitlines()) if line.strip()]
    assert proc.returncode == 130, (lines, stdout)
    assert "Traceback" not in rest and "nothing was written" not in rest, rest
    last = lines[-1]
    on_disk = sorted(p.name for p in out.iterdir())
    pngs_on_disk = [name for name in on_disk if name.endswith(".png")]
    assert len(pngs_on_disk) >= 2 and on_disk == sorted(pngs_on_disk + ["manifest.jsonl"]), on_disk
    assert last.startswith(f"interrupted after {len(pngs_on_disk)} of 6 jobs: wrote "), last
    assert all(f"out/{name}" in last for name in pngs_on_disk), (last, on_disk)
    records = read_manifest(out / "manifest.jsonl")
    assert f"and {len(records)} line(s) of the manifest out/manifest.jsonl" in last, last
    assert sorted(Path(r["output"]).name for r in records) == pngs_on_disk


def test_two_processes_on_one_batch_share_it(tmp_path):
    """Started together without --shard: every job is computed once (by one of them), the other reports it as
    skipped, the manifest holds one line per output and no lock file is left."""
    _tiny_images(tmp_path / "imgs", 6)
    out = tmp_path / "out"
    args = [*kandinsky_command(), "batch", "--images", str(tmp_path / "imgs"), "--mask-rect", "0:20,0:20", "--prompt",
            "x", "--seed", "1", *TINY, "--out-dir", str(out), *MODELS, "--json"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    summaries = [json.loads(stdout) for stdout, _ in results]
    done = [j["index"] for s in summaries for j in s["jobs"] if j["status"] == "done"]
    assert sorted(done) == list(range(6)), summaries          # each job computed exactly once
    for s in summaries:
        for job in s["jobs"]:
            assert job["status"] in ("done", "skipped"), job
            if job["status"] == "skipped":
                assert job["reason"] == "outputs exist" or job["reason"].startswith(
                    "being computed by another process (pid "), job
    records = read_manifest(out / "manifest.jsonl")
    assert len((out / "manifest.jsonl").read_text().splitlines()) == len(records) == 6
    assert sorted(Path(r["output"]).name for r in records) == [f"p{i}.png" for i in range(6)]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"p{i}.png" for i in range(6)] + ["manifest.jsonl"])


# ------------------------------------------------------------------------------------------ no models

def _hold_lock(path, ready, release):
    lock = OutputLock(path)
    assert lock.acquire() is None
    ready.set()
    release.wait(30)


def test_an_output_lock_is_exclusive_and_released_with_its_owner(tmp_path):
    import multiprocessing

    target = tmp_path / "sub" / "a.png"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    owner = ctx.Process(target=_hold_lock, args=(target, ready, release))
    owner.start()
    assert ready.wait(30)
    mine = OutputLock(target)
    assert mine.held_elsewhere()
    assert mine.acquire() == f"pid {owner.pid} on {socket.gethostname()}"
    os.kill(owner.pid, signal.SIGKILL)   # dies holding it: the file stays, the lock does not
    owner.join(30)
    assert (tmp_path / "sub" / ".a.png.lock").exists() and not mine.held_elsewhere()
    assert mine.acquire() is None        # a stale lock file is taken over
    assert OutputLock(target).acquire() == f"pid {os.getpid()} on {socket.gethostname()}"
    mine.release()
    assert list((tmp_path / "sub").iterdir()) == []   # no lock file is left
    fresh = OutputLock(tmp_path / "new" / "deeper" / "b.png")
    assert fresh.acquire() is None
    fresh.release()
    assert not (tmp_path / "new").exists()   # folders made for the lock alone are removed again



def test_parse_shard():
    assert parse_shard(None) == Shard(0, 1, "all")
    assert parse_shard("1/3") == Shard(1, 3, "--shard") and parse_shard(" 0 / 1 ").size == 1
    for bad in ("3/3", "-1/2", "1/0", "a/b", "1", "1/2/3"):
        with pytest.raises(UserError, match="bad --shard"):
            parse_shard(bad)


def test_every_job_is_in_exactly_one_shard():
    for n in (1, 2, 3, 7):
        owners = [[k for k in range(n) if Shard(k, n).owns(SimpleNamespace(index=i))] for i in range(50)]
        assert all(len(o) == 1 for o in owners)
        assert owners == [[i % n] for i in range(50)]


def test_shard_auto_reads_what_msrun_sets():
    worker = {"RANK_ID": "1", "RANK_SIZE": "2", "MS_NODE_ID": "1", "MS_WORKER_NUM": "2", "DEVICE_ID": "1",
              "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118"}
    assert parse_shard("auto", worker) == Shard(1, 2, "RANK_ID/RANK_SIZE", 1)
    only_ms = {k: v for k, v in worker.items() if not k.startswith("RANK")}
    assert shard_from_env(only_ms) == Shard(1, 2, "MS_NODE_ID/MS_WORKER_NUM", 1)
    with pytest.raises(UserError, match="--node_rank"):
        shard_from_env({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "8"})
    with pytest.raises(UserError, match="start the command with msrun"):
        shard_from_env({})
    with pytest.raises(UserError, match="do not make a shard"):
        shard_from_env({"RANK_ID": "2", "RANK_SIZE": "2"})
    assert is_msrun_scheduler({"MS_ROLE": "MS_SCHED", "RANK_ID": "0"}) and not is_msrun_scheduler(worker)


def test_interrupts_are_deferred_while_outputs_are_written():
    with Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        interrupts.defer()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)   # nothing is raised while deferring
        with pytest.raises(KeyboardInterrupt):
            interrupts.resume()
        interrupts.resume()   # raised once
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_derived_seeds_are_stable_and_distinct():
    seeds = [derive_seed(0, i) for i in range(100)]
    assert seeds == [derive_seed(0, i) for i in range(100)] and len(set(seeds)) == 100
    assert all(0 <= s < 2**32 for s in seeds) and derive_seed(1, 0) != derive_seed(0, 0)


def _append_many(path, worker, count):
    manifest = Manifest(path)
    for i in range(count):
        manifest.append([{"worker": worker, "i": i, "pad": "x" * (i * 37 % 5000)},
                         {"worker": worker, "i": i, "second": True}])


def test_manifest_appends_from_many_processes(tmp_path):
    import multiprocessing

    path = tmp_path / "m" / "manifest.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 60)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]   # every line is whole JSON
    assert len(records) == 4 * 60 * 2
    for w in range(4):
        mine = [r for r in records if r["worker"] == w]
        assert [r["i"] for r in mine] == [i for i in range(60) for _ in (0, 1)]
        assert all("second" in b and "second" not in a for a, b in zip(mine[::2], mine[1::2]))   # never split


def test_manifest_after_a_torn_line_starts_a_new_line(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"ok": 1}\n{"torn": ')
    Manifest(path).append([{"ok": 2}])
    assert path.read_text().splitlines()[-1] == '{"ok": 2}'
    assert read_manifest(path) == [{"ok": 1}, {"ok": 2}]


def test_out_dir_resolves_outputs(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "cat.png")
    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {image: in/cat.png, prompt: x, mask_rects: ['0:1,0:1']}\n"
                                        "  - {image: in/cat.png, prompt: y, mask_rects: ['0:1,0:1'], out: sub/y.png}\n")
    default = load_batch(tmp_path / "jobs.yaml")
    assert [j.out for j in default] == [tmp_path / "outputs" / "cat.png", tmp_path / "sub" / "y.png"]
    moved = load_batch(tmp_path / "jobs.yaml", out_dir=tmp_path / "res")
    assert [j.out for j in moved] == [tmp_path / "res" / "cat.png", tmp_path / "res" / "sub" / "y.png"]
    assert default[0].negative_prompt is None


@pytest.mark.parametrize("args, message", [
    (["--shard", "2/2"], "bad --shard"),
    (["--shard", "auto"], "--shard auto"),
    (["--images", "{d}", "--out-dir", "{d}/o", "--prompt", "x"], "no mask given"),
    (["--images", "{d}", "--mask-rect", "0:1,0:1", "--prompt", "x"], "needs --out-dir"),
    (["--images", "{d}", "--mask-rect", "0:1,0:1", "--out-dir", "{d}/o"], "needs --prompt"),
    (["--images", "{d}", "--mask-rect", "0:1,0:1", "--prompt", "x", "--out-dir", "{d}/o", "--height", "100"],
     "--height: must be a multiple of 64"),
    (["--images", "{d}/nope", "--mask-rect", "0:1,0:1", "--prompt", "x", "--out-dir", "{d}/o"], "folder not found"),
    (["--images", "{d}", "--mask", "{d}/x.png", "--masks", "{d}", "--prompt", "x", "--out-dir", "{d}/o"], "not both"),
])
def test_batch_usage_errors(tmp_path, monkeypatch, args, message):
    for name in ("RANK_ID", "RANK_SIZE", "MS_NODE_ID", "MS_WORKER_NUM", "MS_ROLE"):
        monkeypatch.delenv(name, raising=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {image: x.png, prompt: x, mask_rects: ['0:1,0:1']}\n")
    args = [a.format(d=tmp_path) for a in args]
    if args[0] == "--shard":
        args = [str(tmp_path / "jobs.yaml")] + args
    result = run("batch", *args, code=2)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.yaml", "x.png"]


def test_msrun_scheduler_process_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")
    monkeypatch.setenv("RANK_ID", "0")
    monkeypatch.setenv("RANK_SIZE", "2")
    result = run("batch", tmp_path / "missing.yaml", "--shard", "auto")
    assert "scheduler" in result.stderr and list(tmp_path.iterdir()) == []


def test_check_shows_shard_seeds_and_skips(batch):
    good = batch.dir / "good.yaml"   # --check stops at the broken image: leave that job out
    good.write_text(JOBS.rsplit("  - {image: in/broken.png", 1)[0])
    result = run("batch", good, "--out-dir", batch.out, "--check", "--shard", "0/2")
    assert "shard 0/2: 2 of 4" in result.stdout
    assert "seed 5" in result.stdout and str(derive_seed(0, 2)) in result.stdout and "(derived)" in result.stdout
    assert result.stdout.count("skip:") == 2 and "2 job(s) skipped" in result.stdout


def test_prior_steps_must_be_at_least_two(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {image: x.png, prompt: x, mask_rects: ['0:1,0:1'], prior_steps: 1}\n")
    with pytest.raises(UserError, match=r"jobs\[0\]\.prior_steps: must be an integer from 2 to 1000, got 1"):
        load_batch(tmp_path / "jobs.yaml")
