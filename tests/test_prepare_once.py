"""The one preparation path: a batch opens each job's image once (prepared before the run, kept for the run), and
`batch --check` prepares jobs exactly as the run does."""
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import FIXTURE
from kandinsky_cli import files
from kandinsky_cli.batch import BatchRunner, Manifest, check_batch
from kandinsky_cli.batchfile import load_batch
from kandinsky_cli.requests import InpaintResult


class FakeEngine:
    """The engine's interface as the batch runner uses it, computing nothing: the result is the prepared canvas."""

    def __init__(self):
        self.prepared = []

    def select_device(self):
        return "cpu"

    def check_embedding_widths(self):
        pass

    def make_embeddings(self, requests, progress=None):
        pass

    def encode_texts(self, requests):
        pass

    decoder = None

    def preflight(self, job):
        return job

    def run(self, job, progress=None):
        self.prepared.append(job)
        Image.fromarray(np.asarray(job.image)).save(job.request.out)
        return InpaintResult([Path(job.request.out)], None, job.seed, job.request.parameters(), {})

    def counter_snapshot(self):
        return {}


def test_a_batch_decodes_each_image_once(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "jobs.yaml").write_text(
        "defaults: {prompt: a hat, mask_rects: ['0:10,0:10'], steps: 2}\n"
        "jobs:\n  - {image: a.png}\n  - {image: b.png, seed: 3}\n  - {image: c.png, extend: {top: 8}}\n")
    jobs = load_batch(tmp_path / "jobs.yaml", out_dir=tmp_path / "out")
    files.DECODED.clear()
    engine = FakeEngine()
    runner = BatchRunner(engine, Manifest(tmp_path / "out" / "manifest.jsonl"))
    outcomes = runner.run(jobs)
    assert [o.status for o in outcomes] == ["done"] * 3
    assert dict(files.DECODED) == {str((tmp_path / f"{n}.png").resolve()): 1 for n in "abc"}
    assert [p.request.image.name for p in engine.prepared] == ["a.png", "b.png", "c.png"]
    assert np.asarray(engine.prepared[2].image).shape == (56, 64, 3)     # the extended canvas, prepared once
    # --check prepares the same jobs the same way (same working sizes and seeds), each image opened once more
    files.DECODED.clear()
    engine_values = {"decoder_model": str(FIXTURE / "inpaint"), "prior_model": str(FIXTURE / "prior"),
                     "dtype": "float32", "offline": True, "mode": "pynative", "device": None}
    check = check_batch(jobs, 0, True, engine_values, folder=False)
    assert check.unchecked is None and all(n == 1 for n in files.DECODED.values()) and len(files.DECODED) == 3
    assert [row[2].working_size for row in check.rows] == [p.plan.working_size for p in engine.prepared]
    assert [row[3][0] for row in check.rows] == [p.seed for p in engine.prepared]
