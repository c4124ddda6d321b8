"""Whole-tool rows of scripts/bench.py (one ``kandinsky inpaint`` command per run, in a child process) and the
sampler convergence rows (final latents of few-step samplers against a many-step DDIM solution).

A tool row's functions return the command line to run: ``(ctx, models, dtype, p) -> argv``, where ``models``
holds the row's scratch folder (``workdir``) and, for the diffusers side, the ``parameters`` the tool reported
for its own run, so that both sides run the same job.
"""
from __future__ import annotations

import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bench_common import GB, SEED, Ctx, Group, Row, log, run_command, short_error
from bench_workloads import ms_dtype

SCRIPTS = Path(__file__).resolve().parent
PROMPT = "a hat"  # the tool rows' prompt, and the one of the fixture's scheduler goldens
NO_PIPELINE_DIR = "needs --pipeline-dir DIR (prior/ and inpaint/ folders, e.g. from scripts/make_random_pipeline.py)"


# --------------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------------
def photo_like_image(width: int, height: int, seed: int = SEED):
    """Smooth random colour fields with fine grain: it resizes and compresses like a photo, unlike white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    grain = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(6.0)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def write_input_image(workdir: Path, width: int, height: int) -> Path:
    path = workdir / f"input-{width}x{height}.png"
    if not path.exists():
        photo_like_image(width, height).save(path)
    return path


def default_rect(size: int) -> str:
    """The README's example rectangle 0:250,250:518 of a 768x768 image, scaled to ``size``."""
    a, b = round(250 * size / 768), round(518 * size / 768)
    return f"0:{a},{a}:{b}"


def region_rect(width: int, height: int) -> str:
    """A square of side height/10, its top at 0.4 height and its left at half the width (1200:1500,2000:2300 for
    4000x3000)."""
    side, top, left = height // 10, 4 * height // 10, width // 2
    return f"{top}:{top + side},{left}:{left + side}"


# --------------------------------------------------------------------------------------------------------------
# parameters read from a tool row's name
# --------------------------------------------------------------------------------------------------------------
def tool_params(ctx: Ctx, name: str, size: int) -> dict:
    if size <= 0 or size % 64:
        raise SystemExit(f"error: workload {name}: the size must be a positive multiple of 64")
    return {"size": size, "width": size, "height": size, "mask_rect": default_rect(size),
            "options": ["--height", str(size), "--width", str(size)]}


def region_params(ctx: Ctx, name: str, width: int, height: int, region: str) -> dict:
    if min(width, height) < 10:
        raise SystemExit(f"error: workload {name}: the image must be at least 10x10")
    return {"width": width, "height": height, "region": region, "mask_rect": region_rect(width, height),
            "options": ["--region", region]}


# --------------------------------------------------------------------------------------------------------------
# command lines
# --------------------------------------------------------------------------------------------------------------
def _sampler_options(ctx: Ctx) -> List[str]:
    """bench.py's --scheduler / --steps / --prior-steps, passed on when given (else the tool's defaults)."""
    opts = []
    for flag, value in (("--scheduler", ctx.scheduler), ("--steps", ctx.steps), ("--prior-steps", ctx.prior_steps)):
        if value is not None:
            opts += [flag, str(value)]
    return opts


def tool_command(ctx: Ctx, models: dict, dtype: str, p) -> List[str]:
    """``kandinsky inpaint IMAGE --mask-rect R --prompt "a hat" --prior-model DIR/prior --decoder-model DIR/inpaint
    --seed 0 --json --out ...``, run from this checkout with this interpreter."""
    work = models["workdir"]
    image = write_input_image(work, p.width, p.height)
    return [sys.executable, "-m", "kandinsky_cli", "inpaint", str(image), "--mask-rect", p.mask_rect,
            "--prompt", PROMPT, "--prior-model", str(ctx.pipeline_dir / "prior"),
            "--decoder-model", str(ctx.pipeline_dir / "inpaint"), "--seed", str(SEED), "--dtype", dtype,
            "--mode", ctx.mode, "--json", "--out", str(work / "tool-out.png"), *p.options, *_sampler_options(ctx)]


def diffusers_command(ctx: Ctx, models: dict, dtype: str, p) -> List[str]:
    """scripts/diffusers_inpaint.py on the same image, mask, folders and seed, with the steps, guidance, size and
    sampler the tool reported for its run."""
    work, job = models["workdir"], models["parameters"]
    argv = [sys.executable, str(SCRIPTS / "diffusers_inpaint.py"), str(write_input_image(work, p.width, p.height)),
            "--mask-rect", p.mask_rect, "--prompt", PROMPT, "--prior-model", str(ctx.pipeline_dir / "prior"),
            "--decoder-model", str(ctx.pipeline_dir / "inpaint"), "--seed", str(SEED), "--dtype", dtype,
            "--steps", str(job["steps"]), "--prior-steps", str(job["prior_steps"]),
            "--guidance", str(job["guidance_scale"]), "--prior-guidance", str(job["prior_guidance_scale"]),
            "--height", str(job["height"]), "--width", str(job["width"]),
            "--scheduler", job.get("scheduler") or ctx.scheduler or "ddim", "--out", str(work / "diffusers-out.png")]
    if ctx.threads:
        argv += ["--threads", str(ctx.threads)]
    return argv


NO_BF16_CPU = "this CPU has no bf16 instructions: torch would emulate bfloat16 (hours at 768x768)"


def cpu_has_bf16() -> bool:
    """The CPU has bf16 instructions (the tool's own test, kandinsky_cli.bf16.CPU_FLAG)."""
    from kandinsky_cli import bf16

    return bf16.CPU_FLAG in bf16.cpu_flags()


def drop_page_cache() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: True where it worked (root on Linux)."""
    import os

    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------------
# running whole commands
# --------------------------------------------------------------------------------------------------------------
class ToolGroup(Group):
    """Each run is one whole command in a fresh child process: wall time, the child's peak RSS and the per-stage
    ``timings`` of its --json output (median per stage). ``--warmup`` does not apply (loading and compiling are
    part of what is measured); ``--repeats`` does. The MindSpore tool runs first: its reported parameters are
    the job the diffusers side repeats."""

    isolated = False  # the children are the measured processes

    def __init__(self):
        super().__init__("tool")

    def run(self, ctx, workloads, dtype, args, emit) -> None:
        for wl in workloads:
            impls = ["mindspore"] + (["torch"] if wl.torch is not None and ctx.torch else [])
            if ctx.pipeline_dir is None:
                for impl in reversed(impls):
                    emit(Row(wl.name, impl, dtype, skipped=NO_PIPELINE_DIR))
                continue
            with tempfile.TemporaryDirectory(prefix="kandinsky-bench-tool-", dir=ctx.tmpdir) as tmp:
                models = {"workdir": Path(tmp).resolve()}  # the children run from the repository root
                # the tool's own cache starts empty: a first run (page cache dropped where we may), then reruns
                env = {"KANDINSKY_CACHE": str(models["workdir"] / "tool-cache")}
                first, output = self._rows(wl, "mindspore", dtype, ctx, models, 1, env, first=True)
                first.extra["variant"] = "first run (empty tool cache, cold page cache where root)"
                second, later = self._rows(wl, "mindspore", dtype, ctx, models, args.repeats, env)
                second.extra["variant"] = "second run (tool cache filled)"
                output = later or output
                if "torch" in impls:
                    # diffusers in the requested dtype and in float32 (the CPU user's two choices), same job
                    for torch_dtype in ("bfloat16", "float32"):
                        torch_row = self._torch_row(wl, torch_dtype, ctx, models, output, args.repeats) \
                            if torch_dtype == "float32" or cpu_has_bf16() else \
                            Row(wl.name, "torch", torch_dtype, skipped=NO_BF16_CPU)
                        if torch_row.median:     # the ratio is against diffusers in bf16 where it ran
                            for row in (first, second):
                                if row.median is not None and (row.ratio is None or torch_dtype != "float32"):
                                    row.ratio = row.median / torch_row.median
                        emit(torch_row)
                emit(first)
                emit(second)

    def _torch_row(self, wl, dtype, ctx, models, tool_output: Optional[dict], repeats: int) -> Row:
        if not tool_output or "parameters" not in tool_output:
            return Row(wl.name, "torch", dtype, skipped="the tool's run failed: its job parameters are unknown")
        return self._rows(wl, "torch", dtype, ctx, {**models, "parameters": tool_output["parameters"]}, repeats)[0]

    @staticmethod
    def _rows(wl, impl: str, dtype: str, ctx: Ctx, models: dict, repeats: int, env: Optional[dict] = None,
              first: bool = False):
        """(Row, the last run's JSON output) of ``repeats`` runs of the workload's command for ``impl``.
        ``first``: drop the OS page cache before the run where this process may (root), as a cold start."""
        extra = {"mode": ctx.mode if impl == "mindspore" else "eager", "warmup": 0}
        try:
            argv = (wl.ms if impl == "mindspore" else wl.torch)(ctx, models, dtype, wl.p)
        except Exception as exc:
            return Row(wl.name, impl, dtype, skipped=short_error(exc), extra=extra), None
        row = Row(wl.name, impl, dtype, extra={**extra, "command": shlex.join(argv)})
        stages: List[Dict[str, float]] = []
        output = None
        for i in range(repeats):
            log(f"{wl.name} {impl} {dtype}: run {i + 1}/{repeats}: {shlex.join(argv)}")
            if first:
                row.extra["page_cache_dropped"] = drop_page_cache()
            done = run_command(argv, models["workdir"] / f"{impl}-stderr.txt", env)
            if done.error:
                log(f"  failed after {done.seconds:.1f} s: {done.error}")
                return Row(wl.name, impl, dtype, skipped=done.error, extra=row.extra), None
            output = done.output
            row.times.append(done.seconds)
            row.peak_rss = max(row.peak_rss or 0, done.peak_rss or 0) or None
            stages.append(output.get("timings") or {})
            log(f"  {done.seconds:.1f} s, peak RSS {(done.peak_rss or 0) / GB:.2f} GB, stages {stages[-1]}")
        row.extra["stages"] = {k: statistics.median(s[k] for s in stages if k in s)
                               for k in dict.fromkeys(k for s in stages for k in s)}
        return row, output


# --------------------------------------------------------------------------------------------------------------
# sampler convergence
# --------------------------------------------------------------------------------------------------------------
CONVERGENCE_SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-2m-karras")
CONVERGENCE_STEPS = (10, 25, 50)
# The reference: DDIM through every training timestep. 999, not 1000 steps: with the fixture's leading spacing and
# steps_offset 1, 1000 steps would start at t = 1000, one past the 1000-entry schedule (diffusers fails there too).
REFERENCE_SAMPLER, REFERENCE_STEPS = "ddim", 999


class RowsGroup(Group):
    """Workloads whose MindSpore function computes and yields its own rows."""

    def run(self, ctx, workloads, dtype, args, emit) -> None:
        for wl in workloads:
            try:
                for row in wl.ms(ctx, None, dtype, wl.p):
                    emit(row)
            except Exception as exc:
                log(f"{wl.name} {dtype}: {short_error(exc)}")
                emit(Row(wl.name, "mindspore", dtype, skipped=short_error(exc), extra={"mode": ctx.mode}))


def final_latents(pipe, inputs, sampler: str, steps: int) -> np.ndarray:
    """The latents after the last step of one 64x64 inpaint call of the tiny pipeline (seed fixed)."""
    from kandinsky_cli.noise import Noise

    height, width = inputs["mask"].shape
    debug: dict = {}
    pipe(PROMPT, inputs["image"], inputs["mask"], inputs["image_embeds"], inputs["negative_image_embeds"],
         height=height, width=width, num_inference_steps=steps, guidance_scale=4.0, scheduler=sampler,
         noise=Noise(SEED), debug=debug)
    return np.asarray(debug["step_latents_out"][-1], np.float64)


def convergence_rows(ctx: Ctx, models, dtype: str, p):
    """One row per (sampler, steps): call time, RMS and max abs distance of its final latents from the
    reference's, on the tiny fixture with the inputs of its golden/schedulers.npz."""
    from kandinsky_cli.inpaint_pipeline import InpaintPipeline

    with np.load(ctx.fixture / "golden" / "schedulers.npz") as npz:
        inputs = {k: npz[k] for k in ("image", "mask", "image_embeds", "negative_image_embeds")}
    pipe = InpaintPipeline(ctx.fixture / "inpaint", ms_dtype(dtype), ctx.mode, bf16=dtype == "bfloat16")
    t0 = time.perf_counter()
    reference = final_latents(pipe, inputs, REFERENCE_SAMPLER, REFERENCE_STEPS)
    log(f"sampler-convergence {dtype}: reference {REFERENCE_SAMPLER} {REFERENCE_STEPS} steps in "
        f"{time.perf_counter() - t0:.1f} s")
    for sampler in CONVERGENCE_SAMPLERS:
        for steps in CONVERGENCE_STEPS:
            t0 = time.perf_counter()
            diff = final_latents(pipe, inputs, sampler, steps) - reference
            seconds = time.perf_counter() - t0
            rms, max_abs = float(np.sqrt(np.mean(diff ** 2))), float(np.max(np.abs(diff)))
            log(f"  {sampler} {steps} steps: rms {rms:.4g}, max abs {max_abs:.4g} ({seconds:.2f} s)")
            yield Row(p.name, "mindspore", dtype, times=[seconds],
                      extra={"mode": ctx.mode, "variant": f"{sampler} {steps}", "scheduler": sampler, "steps": steps,
                             "reference": f"{REFERENCE_SAMPLER}-{REFERENCE_STEPS}", "rms_distance": rms,
                             "max_abs_distance": max_abs})
