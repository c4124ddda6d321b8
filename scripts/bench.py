#!/usr/bin/env python3
"""CPU benchmark of the MindSpore port, side by side with diffusers/torch when they are installed.

    python scripts/bench.py                                   # default workloads, float32 and float16
    python scripts/bench.py --workload unet-step-256 --dtype float32 --repeats 5
    python scripts/bench.py --workload pipeline-real-768-50   # off by default: minutes and ~20 GB
    python scripts/bench.py --json --no-torch                 # one JSON object per line, MindSpore only
    python scripts/bench.py --list                            # what each workload measures
    python scripts/bench.py --workload tool-768-default --pipeline-dir /tmp/real --dtype float32 --repeats 1

Every row times one workload (after ``--warmup`` untimed calls; in graph mode the first call compiles) over
``--repeats`` calls and reports median, min and max seconds and the peak process RSS while the workload ran
(sampled from /proc/self/statm every 20 ms by a background thread). Tiny rows use the fixture checkpoints in
tests/fixtures/kandinsky21-tiny; real-size rows build the real Kandinsky 2.1 architectures from
configs/kandinsky-2-1/*.json with random weights (nothing is downloaded).

When torch, diffusers and transformers import (and ``--no-torch`` is not given) each workload also runs through
diffusers/transformers in the same process; the real-size torch model is built with torch's random init and its
weights are copied by name into the MindSpore cell, so both sides compute on the same numbers. Only one big
model is alive at a time: torch rows, copy, free the torch model, MindSpore rows, free. torch/diffusers are an
optional benchmark extra, never a runtime dependency of the tool.

Whole-tool rows (``tool-*``) run one ``kandinsky inpaint`` command per repeat in a fresh child process on the
pipeline folders of ``--pipeline-dir`` (skipped without it) and report its wall time, its peak RSS and the
per-stage times of its --json ``timings``; ``tool-SIZE-default`` runs the same job through diffusers too.
``sampler-convergence-tiny`` reports how far few-step samplers land from a many-step DDIM solution.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmark the checkout this script belongs to
    sys.path.insert(0, str(REPO))

from bench_common import Ctx, Group, Row, log, short_error  # noqa: E402
from bench_tool import (RowsGroup, ToolGroup, convergence_rows, diffusers_command, region_params,  # noqa: E402
                        tool_command, tool_params)
from bench_workloads import (clip_text_ms, clip_text_torch, component_group, latent_params, load_tiny_ms,  # noqa: E402
                             load_tiny_torch, matmul_ms, matmul_params, matmul_torch, mclip_ms, mclip_torch,
                             movq_decode_ms, movq_decode_torch, movq_encode_ms, movq_encode_torch, ms_clip_text,
                             ms_mclip, ms_movq, ms_prior, ms_unet, nothing_group, pipeline_ms, pipeline_params,
                             pipeline_torch, prior_cached_step_ms, prior_ms, prior_torch, quiet_diffusers,
                             real_pipeline_group,
                             tiny_pipeline_group, torch_clip_text, torch_mclip, torch_movq, torch_prior, torch_unet,
                             unet_ms, unet_torch)
from diffusers_inpaint import SCHEDULERS  # noqa: E402

DEFAULT_FIXTURE = REPO / "tests" / "fixtures" / "kandinsky21-tiny"
DEFAULT_CONFIGS = REPO / "configs" / "kandinsky-2-1"
DTYPES = ("float32", "float16", "bfloat16")

# --------------------------------------------------------------------------------------------------------------
# the workload table
# --------------------------------------------------------------------------------------------------------------
# group key -> the models its workloads share (built once per dtype), or how its rows are run
GROUPS: Dict[str, Group] = {
    "none": nothing_group(),
    "clip": component_group("clip", torch_clip_text, ms_clip_text),
    "mclip": component_group("mclip", torch_mclip, ms_mclip),
    "prior": component_group("prior", torch_prior, ms_prior),
    "unet": component_group("unet", torch_unet, ms_unet),
    "movq": component_group("movq", torch_movq, ms_movq),
    "tiny-pipeline": tiny_pipeline_group(),
    "real-pipeline": real_pipeline_group(),
    "tool": ToolGroup(),
    "convergence": RowsGroup("convergence"),
}


@dataclass(frozen=True)
class Entry:
    """One line of the workload table. ``name`` may hold fields read from the workload's name ({size}, {steps},
    {width}, {height}, {region}); ``params(ctx, name, **fields)`` checks them and derives more; the descriptions are
    formatted with the result. ``ms`` / ``torch`` are called as ``(ctx, models, dtype, p)`` (see the group)."""

    name: str
    group: str
    ms: Callable
    torch: Optional[Callable]       # None: MindSpore only
    what_ms: str
    what_torch: str
    default: bool = True            # False: never in the default set (minutes and GBs, or it needs an option)
    params: Optional[Callable] = None
    listed: Tuple[str, ...] = ()    # instances --list shows besides the default set


PIPELINE_CALL = ("one {size}x{size} inpaint call, {steps} DDIM steps, guidance 4, given image embeddings "
                 "(M-CLIP x2, MoVQ encode, {steps} UNet steps, MoVQ decode); pipelines loaded beforehand")
MS_ONLY = "none (MindSpore only)"
TOOL_RUN = ("a fresh process per run: wall time, its peak RSS, the per-stage times of its --json timings; "
            "bench.py's --scheduler/--steps/--prior-steps when given, the tool's defaults otherwise")

TABLE = (
    Entry("load-tiny", "none", load_tiny_ms, load_tiny_torch,
          "InpaintPipeline(fixture/inpaint) + PriorPipeline(fixture/prior) construction "
          "(tokenizers, configs, safetensors -> cells; graph compilation happens later, on first call)",
          "KandinskyInpaintPipeline.from_pretrained + KandinskyPriorPipeline.from_pretrained"),
    Entry("matmul-{size}", "none", matmul_ms, matmul_torch,
          "the matmul ceiling: compiled ({size}, {size}) @ ({size}, {size}), {gflop:.1f} GFLOP; ops.matmul in float32 "
          "/ float16, the bf16 operator on bf16 operands in bfloat16 (GFLOP/s = {gflop:.1f} / median)",
          "torch.matmul in the dtype", default=False, params=matmul_params, listed=("matmul-4096",)),
    Entry("clip-text", "clip", clip_text_ms, clip_text_torch,
          "compiled CLIPTextModelWithProjection(ids (1, 77)) + asnumpy",
          "transformers CLIPTextModelWithProjection(input_ids (1, 77))"),
    Entry("mclip-text", "mclip", mclip_ms, mclip_torch,
          "compiled MultilingualCLIP(ids, mask (1, 77)) + asnumpy",
          "diffusers MultilingualCLIP(input_ids, attention_mask (1, 77))"),
    Entry("prior-step", "prior", prior_ms, prior_torch,
          "compiled PriorTransformer(x (2, 768), timestep_input, proj (2, 768), hidden (2, 77, 768), "
          "mask (2, 77)) + asnumpy",
          "diffusers PriorTransformer(same inputs, bool mask)"),
    Entry("prior-step-cached", "prior", prior_cached_step_ms, prior_torch,
          "compiled PriorTransformer.step(x, timestep_input, the text tokens' keys/values from prefix()) + asnumpy: "
          "a step as PriorPipeline runs it (prefix computed once per prompt, not timed)",
          "diffusers PriorTransformer, the whole sequence, as KandinskyPriorPipeline runs every step"),
    Entry("unet-step-{size}", "unet", unet_ms, unet_torch,
          "compiled UNet(sample (2, 9, {lat}, {lat}), time_proj, hidden (2, 77, 1024), "
          "text/image embeds (2, 768)) + asnumpy",
          "diffusers UNet2DConditionModel(same inputs, added_cond_kwargs)", params=latent_params),
    Entry("movq-encode-{size}", "movq", movq_encode_ms, movq_encode_torch,
          "compiled VQModel.encode_latents(image (1, 3, {size}, {size})) + asnumpy",
          "diffusers VQModel.encode(image).latents", params=latent_params),
    Entry("movq-decode-{size}", "movq", movq_decode_ms, movq_decode_torch,
          "compiled VQModel.decode_latents(latents (1, 4, {lat}, {lat})) + asnumpy",
          "diffusers VQModel.decode(latents, force_not_quantize=True)", params=latent_params),
    Entry("pipeline-tiny-{size}-{steps}", "tiny-pipeline", pipeline_ms, pipeline_torch,
          "InpaintPipeline.__call__ -- tiny fixture: " + PIPELINE_CALL,
          "KandinskyInpaintPipeline.__call__(output_type='np') -- same", params=pipeline_params),
    Entry("pipeline-real-{size}-{steps}", "real-pipeline", pipeline_ms, pipeline_torch,
          "InpaintPipeline.__call__ -- real-size random weights: " + PIPELINE_CALL,
          "KandinskyInpaintPipeline.__call__(output_type='np') -- same", default=False, params=pipeline_params,
          listed=("pipeline-real-768-50",)),
    Entry("tool-{size}-default", "tool", tool_command, diffusers_command,
          "kandinsky inpaint on a {size}x{size} photo-like image, --mask-rect {mask_rect} --prompt 'a hat' "
          "--seed 0 --height {size} --width {size}, the --pipeline-dir folders; " + TOOL_RUN,
          "scripts/diffusers_inpaint.py: KandinskyPriorPipeline, freed, then KandinskyInpaintPipeline from the "
          "same folders, repeating the job the tool reported (steps, guidance, size, sampler); the same measures",
          default=False, params=tool_params, listed=("tool-768-default",)),
    Entry("tool-region-{width}x{height}-{region}", "tool", tool_command, None,
          "kandinsky inpaint --region {region} on a {width}x{height} photo-like image, --mask-rect {mask_rect} "
          "--prompt 'a hat' --seed 0, the --pipeline-dir folders; " + TOOL_RUN,
          MS_ONLY, default=False, params=region_params,
          listed=("tool-region-4000x3000-full", "tool-region-4000x3000-mask")),
    Entry("sampler-convergence-tiny", "convergence", convergence_rows, None,
          "tiny fixture, golden/schedulers.npz inputs, prompt 'a hat', 64x64, seed 0: one row per sampler "
          "(ddim, dpmpp-2m, dpmpp-2m-karras) and step count (10, 25, 50) with the RMS and max abs distance of its "
          "final latents from a 999-step DDIM solution from the same start noise, and the call time",
          MS_ONLY, default=False, listed=("sampler-convergence-tiny",)),
)

DEFAULT_WORKLOADS = ("load-tiny", "pipeline-tiny-64-10", "clip-text", "mclip-text", "prior-step", "prior-step-cached",
                     "unet-step-256", "unet-step-768", "movq-encode-768", "movq-decode-768")
FIELDS = {"size": r"\d+", "steps": r"\d+", "width": r"\d+", "height": r"\d+", "region": "full|mask"}


@dataclass(frozen=True)
class Workload:
    """A table line resolved for one name: its group object, descriptions and parameters (``p``)."""

    name: str
    group: Group
    ms: Callable
    torch: Optional[Callable]
    what_ms: str
    what_torch: str
    default: bool
    p: SimpleNamespace


def _pattern(template: str) -> "re.Pattern":
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field:
            parts.append(f"(?P<{field}>{FIELDS[field]})")
    return re.compile("^" + "".join(parts) + "$")


def _display(template: str) -> str:
    """``unet-step-{size}`` -> ``unet-step-SIZE``."""
    return re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), template)


def find_workload(ctx: Ctx, name: str) -> Workload:
    for entry in TABLE:
        m = _pattern(entry.name).match(name)
        if not m:
            continue
        fields = {k: int(v) if v.isdigit() else v for k, v in m.groupdict().items()}
        params = entry.params(ctx, name, **fields) if entry.params else fields
        return Workload(name, GROUPS[entry.group], entry.ms, entry.torch, entry.what_ms.format(**params),
                        entry.what_torch.format(**params), entry.default, SimpleNamespace(name=name, **params))
    raise SystemExit(f"error: unknown workload {name!r}; known: {', '.join(DEFAULT_WORKLOADS)}, "
                     + ", ".join(_display(e.name) for e in TABLE if "{" in e.name or not e.default))


def listed_workloads() -> List[str]:
    """What ``--list`` describes without --workload: the default set, then an instance of every other line."""
    return list(DEFAULT_WORKLOADS) + [name for entry in TABLE for name in entry.listed]


# --------------------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------------------
def torch_available() -> Optional[str]:
    """None when torch, diffusers and transformers import; else why not."""
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return short_error(exc)
    return None


def environment(torch_ok: bool) -> dict:
    """Versions and thread settings of this process (each row carries them)."""
    import mindspore as ms

    env = {"mindspore": ms.__version__, "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "ms_runtime_num_threads": ms.get_context("runtime_num_threads"),
           "ms_inter_op_parallel_num": ms.get_context("inter_op_parallel_num")}
    if torch_ok:
        import diffusers
        import torch
        import transformers

        env.update(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
                   torch_num_threads=torch.get_num_threads(), torch_interop_threads=torch.get_num_interop_threads())
    return env


def plan(workloads: List[Workload], dtypes: List[str]) -> List[Tuple[str, Group, List[Workload]]]:
    """The (dtype, group, workloads) units, dtype by dtype, groups in the order their first workload came."""
    units: Dict[str, List[Workload]] = {}
    for wl in workloads:
        units.setdefault(wl.group.key, []).append(wl)
    return [(dtype, group[0].group, group) for dtype in dtypes for group in units.values()]


class InProcess:
    """Runs units in this process; the frameworks are set up (threads, versions) once, on the first unit."""

    def __init__(self, args, emit_json: Callable[[dict], None]):
        self.args, self.emit_json = args, emit_json
        self.ctx: Optional[Ctx] = None
        self.env: dict = {}

    def _setup(self) -> None:
        args = self.args
        reason = "--no-torch" if args.no_torch else torch_available()
        torch_ok = reason is None
        self.ctx = Ctx(args, torch_ok)

        import mindspore as ms

        if args.ms_threads:
            ms.set_context(runtime_num_threads=args.ms_threads)
        if torch_ok:
            import torch

            if args.threads:
                torch.set_num_threads(args.threads)
            quiet_diffusers()
        else:
            log(f"torch rows off ({reason}): MindSpore rows only")
        self.env = environment(torch_ok)
        log("environment: " + ", ".join(f"{k}={v}" for k, v in self.env.items()))

    def run(self, dtype: str, group: Group, workloads: List[Workload]) -> int:
        if self.ctx is None:
            self._setup()
        group.run(self.ctx, workloads, dtype, self.args,
                  lambda row: self.emit_json({**row.as_json(), "env": self.env}))
        return 0


def _torch_expected(args) -> bool:
    import importlib.util

    return not args.no_torch and all(importlib.util.find_spec(m) is not None
                                     for m in ("torch", "diffusers", "transformers"))


def _child_command(args, names: List[str], dtype: str) -> List[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--in-process", "--json", "--dtype", dtype,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--mode", args.mode,
           "--fixture", str(args.fixture), "--configs", str(args.configs)]
    for name in names:
        cmd += ["--workload", name]
    for flag, value in (("--threads", args.threads), ("--ms-threads", args.ms_threads), ("--tmpdir", args.tmpdir),
                        ("--pipeline-dir", args.pipeline_dir), ("--scheduler", args.scheduler),
                        ("--steps", args.steps), ("--prior-steps", args.prior_steps)):
        if value:
            cmd += [flag, str(value)]
    if args.no_torch:
        cmd.append("--no-torch")
    return cmd


def run_child(args, workloads: List[Workload], dtype: str, emit_json) -> int:
    """One unit in a fresh benchmark process (a clean heap and no leftovers); 1 if that process failed, with a
    skipped row for every row it did not report."""
    names = [wl.name for wl in workloads]
    seen = set()
    proc = subprocess.Popen(_child_command(args, names, dtype), stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        try:
            row = json.loads(line)
            seen.add((row["workload"], row["impl"]))
        except (ValueError, KeyError, TypeError):
            sys.stderr.write(line)  # not a row: pass it on
            continue
        emit_json(row)
    rc = proc.wait()
    if rc == 0:
        return 0
    why = f"benchmark process exited with {rc}" + (" (killed: out of memory?)" if rc in (-9, 137) else "")
    log(why)
    for wl in workloads:
        impls = ["torch", "mindspore"] if wl.torch is not None and _torch_expected(args) else ["mindspore"]
        for impl in impls:
            if (wl.name, impl) not in seen:
                emit_json(Row(wl.name, impl, dtype, skipped=why).as_json())
    return 1


def run(args, workloads: List[Workload], emit_json) -> int:
    """Every unit: in this process with --in-process (or when the group's rows are child processes already),
    else in a fresh benchmark process per unit, since MindSpore never frees a compiled network's weights."""
    here = InProcess(args, emit_json)
    units = plan(workloads, args.dtypes)
    failures = 0
    for i, (dtype, group, group_workloads) in enumerate(units, 1):
        if args.in_process or not group.isolated:
            failures += here.run(dtype, group, group_workloads)
            continue
        log(f"unit {i}/{len(units)}: {', '.join(wl.name for wl in group_workloads)} ({dtype}) in a fresh process")
        failures += run_child(args, group_workloads, dtype, emit_json)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------------------
def fmt_s(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def details(row: dict) -> str:
    """Per-stage times of a whole-tool row; distances of a convergence row."""
    parts = [f"{k.removesuffix('_s')} {fmt_s(v)}" for k, v in (row.get("stages") or {}).items()]
    if row.get("rms_distance") is not None:
        parts.append(f"rms {row['rms_distance']:.3g}, max {row['max_abs_distance']:.3g}")
    return ", ".join(parts)


def print_table(rows: List[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    env = next((r["env"] for r in rows if r.get("env")), {})
    keys = ("mindspore", "torch", "diffusers", "ms_runtime_num_threads", "torch_num_threads", "cpu_count")
    modes = sorted({r.get("mode") for r in rows if r["impl"] == "mindspore" and r.get("mode")})
    parts = [f"{k}={env[k]}" for k in keys if env.get(k) is not None]
    if modes:
        parts.append(f"mindspore mode={'/'.join(modes)}")
    caption = ", ".join(parts)
    table = Table(title="kandinsky CPU benchmark (seconds per call; peak RSS of the whole process)", caption=caption)
    with_details = any(details(row) for row in rows)
    columns = ("workload", "impl", "dtype", "median s", "min s", "max s", "peak RSS GB", "ratio ms/torch")
    for col in columns + (("details",) if with_details else ()):
        table.add_column(col, justify="left" if col in ("workload", "impl", "dtype", "details") else "right")
    notes = []
    for row in rows:
        name = row["workload"] + (f" {row['variant']}" if row.get("variant") else "")
        if row.get("skipped"):
            notes.append(f"{name} {row['impl']} {row['dtype']}: {row['skipped']}")
            cells = [name, row["impl"], row["dtype"], f"skipped [{len(notes)}]", "-", "-", "-", "-"]
        else:
            peak = "-" if row.get("peak_rss_gb") is None else f"{row['peak_rss_gb']:.2f}"
            ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}"
            cells = [name, row["impl"], row["dtype"], fmt_s(row["median_s"]), fmt_s(row["min_s"]),
                     fmt_s(row["max_s"]), peak, ratio]
        table.add_row(*cells, *([details(row)] if with_details else []))
    # wide enough for every cell to fit unwrapped
    console = Console(width=max(120, Console().width, Console(width=1000).measure(table).maximum))
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"[{i}] {note}", markup=False, highlight=False)


def describe(workloads: List[Workload]) -> None:
    for wl in workloads:
        flag = "" if wl.default else "  (off by default)"
        print(f"{wl.name}{flag}\n  mindspore: {wl.what_ms}\n  torch:     {wl.what_torch}")


# --------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="default workloads: " + ", ".join(DEFAULT_WORKLOADS) +
                                        "\nall workloads: " + ", ".join(_display(e.name) for e in TABLE))
    ap.add_argument("--workload", action="append", metavar="NAME",
                    help="run only this workload (repeatable); default: every default workload")
    ap.add_argument("--dtype", action="append", choices=DTYPES + ("both",),
                    help="float32, float16, bfloat16, or both (= float32 and float16; repeatable; default both). "
                         "bfloat16: MindSpore with the bf16 operators (--dtype bfloat16 of the tool), torch with "
                         "the models in torch.bfloat16")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per row (default 3)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed calls before timing (default 1; compiles; not for the tool-* rows)")
    ap.add_argument("--mode", choices=("graph", "pynative"), default="graph",
                    help="MindSpore execution: compiled graph (default, as the CLI) or pynative")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: torch's own default)")
    ap.add_argument("--ms-threads", type=int,
                    help="MindSpore runtime_num_threads (default: MindSpore's own default)")
    ap.add_argument("--no-torch", action="store_true", help="MindSpore rows only, even if torch is installed")
    ap.add_argument("--json", action="store_true", help="one JSON object per row on stdout instead of a table")
    ap.add_argument("--list", action="store_true", help="describe the selected workloads (default: all) and exit")
    ap.add_argument("--in-process", action="store_true",
                    help="run every unit in this process (default: one fresh process per model group and dtype, "
                         "since MindSpore never frees a compiled network's weights)")
    ap.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="tiny fixture folder (prior/, inpaint/)")
    ap.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS, help="real-size config folder")
    ap.add_argument("--tmpdir", help="where pipeline-real-* writes its temporary random checkpoint (GBs) and the "
                                     "tool-* rows their input and output images")
    ap.add_argument("--pipeline-dir", type=Path, metavar="DIR",
                    help="DIR/prior and DIR/inpaint pipeline folders for the tool-* rows (real size: "
                         "scripts/make_random_pipeline.py DIR; the tiny fixture works too)")
    ap.add_argument("--scheduler", choices=SCHEDULERS, help="sampler of the tool-* rows (default: the tool's)")
    ap.add_argument("--steps", type=int, metavar="N", help="decoder steps of the tool-* rows (default: the tool's)")
    ap.add_argument("--prior-steps", type=int, metavar="N", help="prior steps of the tool-* rows (default: the tool's)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    for name, value in (("--threads", args.threads), ("--ms-threads", args.ms_threads), ("--steps", args.steps),
                        ("--prior-steps", args.prior_steps)):
        if value is not None and value < 1:
            ap.error(f"{name} must be at least 1")
    if args.pipeline_dir is not None:  # the tool runs from the repository root
        args.pipeline_dir = args.pipeline_dir.resolve()
    dtypes = args.dtype or ["both"]
    args.dtypes = [d for d in DTYPES if d in dtypes or ("both" in dtypes and d != "bfloat16")]
    args.workloads = list(dict.fromkeys(args.workload or DEFAULT_WORKLOADS))
    return args


def check_paths(args) -> Optional[str]:
    """Why the fixture, configs or pipeline folders given cannot be used, or None."""
    needed = [(args.fixture / "inpaint", "fixture"), (args.configs / "unet.json", "configs")]
    if args.pipeline_dir is not None:
        needed += [(args.pipeline_dir / sub / "model_index.json", "--pipeline-dir") for sub in ("prior", "inpaint")]
    for path, what in needed:
        if not path.exists():
            return f"{what} not found: {path}"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = check_paths(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # names are checked (and described) without importing any framework
    names = listed_workloads() if args.list and not args.workload else args.workloads
    workloads = [find_workload(Ctx(args, False), name) for name in names]
    if args.list:
        describe(workloads)
        return 0

    rows: List[dict] = []

    def emit_json(row: dict) -> None:
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)

    started = time.perf_counter()
    rc = run(args, workloads, emit_json)
    log(f"done in {time.perf_counter() - started:.0f} s")
    if not args.json:
        order = {name: i for i, name in enumerate(args.workloads)}
        rows.sort(key=lambda r: (order.get(r["workload"], len(order)), DTYPES.index(r["dtype"]), r["impl"] != "torch"))
        print_table(rows)
    return rc


if __name__ == "__main__":
    sys.exit(main())
