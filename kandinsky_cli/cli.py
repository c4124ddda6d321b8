"""The ``kandinsky`` command line (Typer + Rich).

Every command is one ``@app.command()`` function. Bad input raises :class:`UserError` anywhere below;
:class:`_Group` turns it (and Typer's own usage errors) into exactly one line ``error: <message>`` on
stderr with exit code 2, never a traceback. Warnings from this package (e.g. a resized mask) become
``warning: <message>`` lines.

Nothing heavy is imported here: ``--help`` must stay fast. Commands that run a model import MindSpore
inside their function. The mask options are declared once (``MaskRectOption`` ...) so that every
command taking a mask spells them the same way; :meth:`masks.MaskSpec.from_options` turns them into a
mask specification.
"""
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from . import TOOL_NAME, __version__, interrupts, options
from .errors import UserError

# Click's exception classes, whether Typer uses click itself or ships its own copy of it.
_CLICK_ERRORS = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError, ClickException = _CLICK_ERRORS["UsageError"], _CLICK_ERRORS["ClickException"]

EXIT_USER_ERROR = 2

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------ error handling

def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    """Print one line ``error: <message>`` on stderr and exit with ``code``."""
    line = " ".join(str(message).split())
    typer.echo(f"error: {line}", err=True)
    sys.exit(code)


def _warnings_as_lines(show_other: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning``: this package's warnings as one ``warning:`` line, others unchanged."""
    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None,
             line: Optional[str] = None) -> None:
        if category.__module__.split(".")[0] == __name__.split(".")[0]:
            stderr.print(f"[yellow]warning:[/yellow] {escape(' '.join(str(message).split()))}")
        else:
            show_other(message, category, filename, lineno, file, line)
    return show


class _Group(TyperGroup):
    """The app's command group: one ``error:`` line and exit code 2 for every bad input."""

    def main(self, args: Any = None, prog_name: Optional[str] = None, complete_var: Optional[str] = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _warnings_as_lines(warnings.showwarning)
            try:
                rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
            except UserError as e:
                _fail(str(e))
            except UsageError as e:
                if type(e).__name__ == "NoArgsIsHelpError":  # no arguments: the help was printed
                    if e.format_message():
                        typer.echo(e.format_message())
                    sys.exit(EXIT_USER_ERROR)
                hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
                _fail(e.format_message() + hint, e.exit_code)
            except ClickException as e:
                _fail(e.format_message(), e.exit_code)
            except (typer.Abort, KeyboardInterrupt):
                interrupts.exit_interrupted()
            except (MemoryError, RuntimeError) as e:
                if not isinstance(e, MemoryError) and "memory" not in str(e).lower():
                    raise
                _fail("out of memory: the model does not fit at this size; try a smaller --height/--width, "
                      "--dtype float16, or fewer --num-images", 1)
        code = rv if isinstance(rv, int) else 0
        if code == interrupts.EXIT_INTERRUPTED:   # Click's own Ctrl-C handling, or the batch's report
            interrupts.exit_interrupted("" if interrupts.reported else None)
        if standalone_mode:
            sys.exit(code)
        return rv


# ------------------------------------------------------------------------------------------ the app

app = typer.Typer(
    cls=_Group,
    name=TOOL_NAME,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from .system import version_line

        typer.echo(version_line())   # imports MindSpore (~2 s): --version only
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Kandinsky 2.1 inpainting on MindSpore: repaint the masked part of an image from a text prompt.

    Masks: white = repaint, black = keep. Sizes are WIDTHxHEIGHT.
    """


# The options of each command come from options.py (one definition for the CLI, batch files and metadata).
MASK_OPTIONS = options.in_scope(options.MASK)
ENGINE_OPTIONS = options.in_scope(options.ENGINE)
PRIOR_ENGINE_OPTIONS = [o for o in ENGINE_OPTIONS if o.key != "decoder_model"]
INPAINT_OPTIONS = [o for o in options.in_scope(options.JOB) if not o.argument]
FOLDER_OPTIONS = options.in_scope(options.FOLDER)
# ``kandinsky prior`` runs one stage: its steps and guidance were --steps and --guidance there.
PRIOR_ALIASES = {"prior_steps": ("--steps",), "prior_guidance_scale": ("--guidance", "--guidance-scale"),
                 "prior_model": ("--model",)}

JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]


def _given(values: dict) -> dict:
    """The options that were given (not None)."""
    return {k: v for k, v in values.items() if v is not None}


def _engine(values: dict, device_id: Optional[int] = None):
    """A :class:`core.Kandinsky` from the engine options (defaults for those not given), its model folders found
    (downloaded if needed) before any progress bar is drawn."""
    from .core import Kandinsky

    engine = {**options.defaults(options.ENGINE_KEYS), **_given({k: values.get(k) for k in options.ENGINE_KEYS})}
    return Kandinsky(**engine, device_id=device_id)


# ------------------------------------------------------------------------------------------ commands

@app.command("mask")
@options.command(MASK_OPTIONS)
def mask_command(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="PATH", show_default=False,
                                      help="Output: .png (white = repaint) or .npy (float32, 1 = repaint).")],
    image: Annotated[Optional[Path], typer.Argument(
        metavar="IMAGE", show_default=False, help="Take the mask's size from this image.")] = None,
    size: Annotated[Optional[str], typer.Option(
        "--size", metavar="WxH", show_default=False,
        help="Mask size WIDTHxHEIGHT, e.g. 768x512 (when no IMAGE is given).")] = None,
    json_out: JsonOption = False,
    values: Optional[dict] = None,
) -> None:
    """Write the exact mask that inpainting would use (on the extended canvas with --extend), and print the working
    size and the region box the model will see.

    Example: kandinsky mask --size 768x768 --mask-rect 0:250,250:518 --out mask.png
    """
    import numpy as np

    from .files import load_image
    from .masks import MaskSpec, check_mask_output, format_size, parse_size, save_mask
    from .region import plan as region_plan

    values = {**_defaults_of(MASK_OPTIONS), **_given(values or {})}
    check_mask_output(out)
    if image is not None and size is not None:
        raise UserError("give either IMAGE or --size, not both: the mask has the size of the image")
    if image is None and size is None:
        raise UserError("the mask needs a size: give an IMAGE or --size WIDTHxHEIGHT (e.g. --size 768x768)")
    extend = values["extend"]
    given_mask = values["mask"] is not None or bool(values["mask_rects"])
    if not given_mask and extend is None:
        raise UserError("no mask given: use --mask-rect ROWS,COLS (repeatable) and/or --mask FILE, or --extend")
    if image is not None:
        loaded = load_image(image)
        size_hw = (loaded.height, loaded.width)
    else:
        size_hw = parse_size(size)  # type: ignore[arg-type]
    if (values["height"] is None) != (values["width"] is None):
        raise UserError("--height and --width go together: give both or neither")
    spec = None
    hard = np.zeros(size_hw, dtype=bool)
    if given_mask:
        spec = MaskSpec(path=values["mask"], rects=values["mask_rects"], invert=values["invert_mask"],
                        grow=values["grow"], feather=values["feather"])
        hard = spec.build(size_hw)
    if extend is not None:
        hard = extend.pad(hard, True)
    plan = region_plan(hard.shape[::-1], hard, values["region"], values["region_padding"], values["resolution"],
                       values["height"], values["width"], feather=values["feather"], extend=extend)
    params = {"command": "mask", "image": str(image) if image is not None else None,
              "size": format_size(hard.shape), **(spec.parameters() if spec else {}), **plan.parameters()}
    save_mask(out, hard, params)
    pixels = int(hard.sum())
    if json_out:
        _print_json({"out": str(out), "size": list(hard.shape[::-1]), "pixels": pixels, **plan.parameters()})
        return
    width, height = plan.working_size
    stdout.print(f"wrote {escape(str(out))}: {format_size(hard.shape)}, {pixels} pixels to repaint "
                 f"({100.0 * hard.mean():.1f}%); working size {width}x{height}, region {plan.region} "
                 f"box {list(plan.region_box)}")


def _defaults_of(opts) -> dict:
    return options.defaults(o.key for o in opts)


@app.command("grid")
def grid_command(
    images: Annotated[List[Path], typer.Argument(
        metavar="IMAGES", show_default=False,
        help="Images (PNG/JPEG/WebP) and masks (.png, or .npy floats in [0, 1] shown as grey), row-major.")],
    rows: Annotated[int, typer.Option("--rows", min=1, metavar="R", show_default=False,
                                      help="Number of rows.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="PATH", show_default=False,
                                      help="Output image (.png, .jpg or .webp).")],
    cols: Annotated[Optional[int], typer.Option(
        "--cols", min=1, metavar="C", show_default=False,
        help="Number of columns; default: enough for all images, ceil(images / rows).")] = None,
) -> None:
    """Put images side by side in a grid (cells the size of the first image; the others are resized).

    Example: kandinsky grid cat.png mask.png --rows 1 --out grid.png
    """
    from .files import output_image_format, save_image
    from .grid import grid_shape, load_grid_input, make_image_grid

    output_image_format(out)
    rows, cols = grid_shape(len(images), rows, cols)
    grid = make_image_grid([load_grid_input(p) for p in images], rows, cols)
    save_image(out, grid, {"command": "grid", "images": [str(p) for p in images], "rows": rows, "cols": cols})
    stdout.print(f"wrote {escape(str(out))}: {rows}x{cols} grid, {grid.width}x{grid.height} pixels")


class _StepProgress:
    """A Rich progress bar per stage on a terminal (stderr); nothing when stderr is not a TTY."""

    def __init__(self) -> None:
        self.bar = None
        self.tasks: dict = {}

    def __enter__(self) -> "_StepProgress":
        if stderr.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=stderr, transient=False)
            self.bar.start()
        return self

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.bar is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=step)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


def _print_json(obj: Any) -> None:
    from .files import to_json

    typer.echo(to_json(obj, indent=2))


@app.command("prior")
@options.command(options.in_scope(options.PRIOR) + PRIOR_ENGINE_OPTIONS, aliases=PRIOR_ALIASES)
def prior_command(
    prompt_text: Annotated[Optional[str], typer.Argument(
        metavar="PROMPT", show_default=False, help="Text prompt (or --prompt; optional with --mix).")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", metavar="DIR", help="Where to write the files.")]
    = Path("."),
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="File name stem.")] = "prior",
    json_out: JsonOption = False,
    values: Optional[dict] = None,
) -> None:
    """Prompt -> CLIP image embeddings: writes NAME.image_embeds.npy, NAME.negative_image_embeds.npy, NAME.json.

    Example: kandinsky prior "a hat" --seed 42 --out-dir embeds
    """
    from .core import PriorRequest, prior_output_paths, write_prior_outputs
    from .files import check_writable_output, load_image
    from .noise import random_seed

    values = dict(values or {})
    if prompt_text is not None:
        if values.get("prompt") is not None:
            raise UserError("give the prompt once: as PROMPT or as --prompt, not both")
        values["prompt"] = options.check_value("prompt", prompt_text, "PROMPT")
    if "/" in name or not name.strip() or "\0" in name:
        raise UserError(f"bad --name {name!r}: a file name stem without '/'")
    for path in prior_output_paths(out_dir, name).values():
        check_writable_output(path)
    job = {k: v for k, v in values.items() if k in options.PRIOR_KEYS and v is not None}
    request = PriorRequest({**job, "seed": job.get("seed", random_seed())})
    for what, _ in request.mix:
        if Path(what).suffix.lower() in options.IMAGE_SUFFIXES:
            load_image(what)  # an unreadable mix image fails before any model loads
    engine = _engine(values)
    engine.root("prior")   # find (or download) the model before the progress bar is drawn
    with _StepProgress() as progress:
        emb, neg = engine.run_prior(request, progress)
    parameters = {"tool": TOOL_NAME, "version": __version__, "command": "prior", **request.parameters(),
                  "noise": "numpy.default_rng", "prior_model": engine.prior_model, "dtype": engine.dtype_name,
                  "dtype_requested": engine.dtype_requested, "mode": engine.mode}
    paths = write_prior_outputs(out_dir, name, emb, neg, parameters)
    interrupts.note_written(paths.values())
    if json_out:
        _print_json({**paths, "seed": request.seed, "shape": list(emb.shape), "parameters": parameters})
    else:
        stdout.print(f"seed {request.seed}; embeddings {emb.shape[0]}x{emb.shape[1]}")
        for path in paths.values():
            stdout.print(f"wrote {escape(path)}")


@app.command("inpaint")
@options.command(INPAINT_OPTIONS + ENGINE_OPTIONS)
def inpaint_command(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", show_default=False, help="Input image (PNG/JPEG/WebP).")],
    json_out: JsonOption = False,
    server: Annotated[Optional[str], typer.Option(
        "--server", envvar="KANDINSKY_SERVER", metavar="URL", show_default=False,
        help="Run the job on a `kandinsky serve` at URL (also $KANDINSKY_SERVER; its token from $KANDINSKY_TOKEN) "
             "and write the result here, as a local run would.")] = None,
    values: Optional[dict] = None,
) -> None:
    """Repaint the masked area of IMAGE from a prompt (runs the prior first unless embeddings are given).

    Example: kandinsky inpaint cat.png --mask-rect 0:250,250:518 --prompt "a hat"
    """
    from .core import InpaintRequest

    values = dict(values or {})
    job = _given({k: values.get(k) for k in options.JOB_KEYS})
    job["image"] = Path(options.check_value("image", str(image), "IMAGE"))
    job.setdefault("out", Path(f"{image.stem}-inpainted.png"))
    if "prompt" not in job:
        raise UserError("missing option '--prompt' (what to paint)")
    if server:
        result = _inpaint_remote(server, job, values)
    else:
        engine = _engine(values)
        prepared = engine.prepare(InpaintRequest(job))   # every input, output and model folder, before any model loads
        with _StepProgress() as progress:
            result = engine.run(prepared, progress)
    interrupts.note_written(result.outputs + ([result.grid] if result.grid else []))
    written = [str(p) for p in result.outputs] + ([str(result.grid)] if result.grid else [])
    if json_out:
        _print_json({"outputs": [str(p) for p in result.outputs], "grid": str(result.grid) if result.grid else None,
                     "seed": result.seed, "timings": result.timings, "parameters": result.parameters})
    else:
        stdout.print(f"seed {result.seed}")
        for path in written:
            stdout.print(f"wrote {escape(path)}")


def _inpaint_remote(server: str, job: dict, values: dict) -> Any:
    """``inpaint --server``: the job runs on the server (remote.py); the models are the server's."""
    from .remote import ServerFailure, inpaint_remote

    engine_flags = [options.flag_of(k) for k in options.ENGINE_KEYS if values.get(k) is not None]
    if engine_flags:
        raise UserError(f"{', '.join(engine_flags)}: with --server the models and how they run are the server's "
                        f"(give them to kandinsky serve)")
    try:
        with _StepProgress() as progress:
            return inpaint_remote(server, job, progress)
    except ServerFailure as e:
        _fail(str(e), 1)


@app.command("batch")
@options.command(FOLDER_OPTIONS + ENGINE_OPTIONS,
                 panels={o.key: ("Folder mode", "Folder mode: ") for o in FOLDER_OPTIONS})
def batch_command(
    jobs_file: Annotated[Optional[Path], typer.Argument(
        metavar="JOBS.yaml", show_default=False,
        help="Batch file (see configs/batch-example.yaml). Or folder mode: --images DIR instead.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out-dir", metavar="DIR", show_default=False,
        help="Output folder (and manifest.jsonl). With a batch file: relative 'out' values and the default "
             "<image stem>.png go into it; default: outputs/ next to the batch file. Required with --images.")]
    = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Run every job again; by default a job whose outputs all exist is skipped.")] = False,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", metavar="K/N|auto", show_default=False,
        help="Run only the jobs with index % N == K (0 <= K < N). 'auto': K and N from msrun's environment "
             "(RANK_ID/RANK_SIZE, device DEVICE_ID).")] = None,
    base_seed: Annotated[int, typer.Option(
        "--base-seed", min=0, max=2**32 - 1, metavar="N",
        help="Jobs without a seed get one derived from N and the job's index (reproducible).")] = 0,
    check: Annotated[bool, typer.Option("--check", help="Validate the jobs and their inputs and print the plan "
                                                        "(with what would be skipped); loads no model.")] = False,
    images: Annotated[Optional[Path], typer.Option(
        "--images", metavar="DIR", show_default=False, rich_help_panel="Folder mode",
        help="Folder mode: one job per PNG/JPEG/WebP file of DIR (sorted by name), output "
             "OUT-DIR/<stem>.png.")] = None,
    masks: Annotated[Optional[Path], typer.Option(
        "--masks", metavar="DIR", show_default=False, rich_help_panel="Folder mode",
        help="Folder mode: the mask of each image is the file of DIR with the image's stem (.png/.jpg/.jpeg/"
             ".webp/.npy); an image without one fails, the others run.")] = None,
    json_out: JsonOption = False,
    values: Optional[dict] = None,
) -> None:
    """Run many inpainting jobs with the models loaded once: a YAML batch file, or a folder of images.

    Resumable (jobs whose outputs exist are skipped), one failed job does not stop the others (exit code 1),
    every output gets a line in OUT-DIR/manifest.jsonl. Spread over processes or hosts with --shard K/N or
    `msrun ... $(which kandinsky) batch JOBS.yaml --shard auto`.

    Examples: kandinsky batch jobs.yaml --check;  kandinsky batch jobs.yaml;
    kandinsky batch --images photos --masks masks --prompt "a hat" --out-dir out
    """
    from .batch import MANIFEST_NAME, is_msrun_scheduler, parse_shard
    from .files import check_output_dir

    if shard is not None and shard.strip().lower() == "auto" and is_msrun_scheduler():
        # msrun runs the command once more as its scheduler process: the workers do the jobs.
        stderr.print("msrun scheduler process (MS_ROLE=MS_SCHED): the workers run the jobs; nothing to do here")
        return
    values = dict(values or {})
    folder_values = {o.key: values.pop(o.key) for o in FOLDER_OPTIONS}
    given = [key for key, value in folder_values.items() if value is not None] + (["masks"] if masks else [])
    if jobs_file is not None and images is not None:
        raise UserError("give a batch file JOBS.yaml or --images DIR (folder mode), not both")
    if jobs_file is None and images is None:
        raise UserError("give a batch file (kandinsky batch JOBS.yaml) or a folder of images (--images DIR ...)")
    shard_spec = parse_shard(shard)
    if out_dir is not None:
        check_output_dir(out_dir)
    if jobs_file is not None:
        if given:
            names = ", ".join(options.flag_of(key) if key in options.BY_KEY else "--" + key for key in given)
            raise UserError(f"{names}: job options are for folder mode (--images DIR); in a batch file give the "
                            f"job keys under 'defaults:' or per job")
        from .batchfile import load_batch

        jobs = load_batch(jobs_file, out_dir=out_dir)
        manifest_dir = out_dir if out_dir is not None else jobs_file.resolve().parent / "outputs"
        title = str(jobs_file)
    else:
        if out_dir is None:
            raise UserError("folder mode (--images) needs --out-dir DIR for the results")
        from .batchfile import folder_jobs

        jobs = folder_jobs(images, folder_values, out_dir, masks=masks)  # type: ignore[arg-type]
        manifest_dir, title = out_dir, f"--images {images}"
    manifest_path = Path(manifest_dir).absolute() / MANIFEST_NAME
    mine = shard_spec.select(jobs)
    if check:
        _check_batch(title, jobs, mine, shard_spec, base_seed, overwrite)
        return
    code = _run_batch(title, mine, len(jobs), shard_spec, manifest_path, base_seed, overwrite, json_out,
                      _engine(values, shard_spec.device_id))
    if code:
        raise typer.Exit(code)


@app.command("serve")
@options.command(ENGINE_OPTIONS)
def serve_command(
    host: Annotated[str, typer.Option("--host", metavar="ADDR", help="Address to listen on. Other than loopback "
                                      "(127.0.0.1, ::1, localhost) it needs --token or --no-auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, metavar="N", help="Port (0: any free one).")]
    = 7860,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out-dir", metavar="DIR", show_default=False,
        help="Where uploads and outputs go, one folder per job id (default: serve/ in the tool's cache folder, "
             "~/.cache/kandinsky/serve or $KANDINSKY_CACHE/serve).")] = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="KANDINSKY_TOKEN", metavar="TOKEN", show_default=False,
        help="Every API call needs 'Authorization: Bearer TOKEN' (also $KANDINSKY_TOKEN).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback --host without a token.")]
    = False,
    queue_size: Annotated[int, typer.Option("--queue", min=1, max=1000, metavar="N",
                                            help="Jobs that may wait while one runs; more: HTTP 503.")] = 8,
    values: Optional[dict] = None,
) -> None:
    """Keep the models loaded behind an HTTP API (/api/v1) and a web page to paint masks (/); Ctrl-C stops it.

    Example: kandinsky serve --port 7860, then open http://127.0.0.1:7860/
    """
    from .server import serve

    engine = {**options.defaults(options.ENGINE_KEYS), **_given({k: (values or {}).get(k)
                                                                 for k in options.ENGINE_KEYS})}
    serve(engine, host, port, out_dir, token, no_auth, queue_size, stderr.print)


@app.command("download")
@options.command([o for o in ENGINE_OPTIONS if o.key in ("prior_model", "decoder_model", "dtype", "offline")])
def download_command(
    revision: Annotated[Optional[str], typer.Option(
        "--revision", metavar="REV", show_default=False,
        help="Branch, tag or commit of the hub repos (default: their main branch).")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Only check, without network, that the cache holds every file a run at --dtype loads: "
                        "exit code 0 if so, else an error naming what is missing.")] = False,
    json_out: JsonOption = False,
    values: Optional[dict] = None,
) -> None:
    """Fetch the prior and decoder pipelines into the Hugging Face cache, for runs without network.

    Only the files the tool loads: configs, tokenizers, safetensors weights (for --dtype float16 the fp16
    variants where a component has them). Afterwards every command also runs with --offline or
    HF_HUB_OFFLINE=1. Interrupted? Run it again: finished files are kept.

    Examples: kandinsky download;  kandinsky download --dtype float16;  kandinsky download --check
    """
    from .download import check_line, locate, report, summary_table, terminal_console
    from .model_io import offline_requested

    values = {**options.defaults(options.ENGINE_KEYS), **_given(values or {})}
    dtype = values["dtype"]
    console = None if check else terminal_console()
    snapshots = {role: locate(values[f"{role}_model"], revision, dtype, check or offline_requested(values["offline"]),
                              console) for role in ("prior", "decoder")}
    if json_out:
        _print_json(report(snapshots, dtype))
    elif check:
        stdout.print(escape(check_line(snapshots, dtype)), soft_wrap=True)
    else:
        stdout.print(summary_table(snapshots, dtype))


@app.command("info")
@options.command([options.BY_KEY["device"]])
def info_command(
    json_out: JsonOption = False,
    values: Optional[dict] = None,
) -> None:
    """Versions, device, threads, memory, and the models in the Hugging Face cache (complete per --dtype or not).

    Example: kandinsky info --json
    """
    from .system import info_tables, machine_info

    info = machine_info((values or {}).get("device"))
    if json_out:
        _print_json(info)
    else:
        for table in info_tables(info):
            stdout.print(table)


def _check_batch(title: str, jobs: List[Any], mine: List[Any], shard: Any, base_seed: int, overwrite: bool) -> None:
    """``batch --check``: open every input of this shard's jobs and print the plan; no model is loaded."""
    from .batch import job_seed, outputs_exist
    from .batchfile import check_job_inputs

    inputs = [check_job_inputs(job) for job in mine]
    plan = [(job, size, run_plan, job_seed(job, base_seed), not overwrite and outputs_exist(job))
            for job, (size, run_plan) in zip(mine, inputs)]
    part = f" (shard {shard.label}: {len(mine)} of {len(jobs)})" if shard.size > 1 else ""
    stdout.print(_plan_table(title + part, plan))
    skip = sum(1 for *_, skipped in plan if skipped)
    images = sum(job.num_images for job, *_, skipped in plan if not skipped)
    stdout.print(f"[green]ok[/green]: {len(mine)} job(s), {images} image(s) to generate"
                 + (f", {skip} job(s) skipped (outputs exist)" if skip else "") + "; nothing was run.", soft_wrap=True)


class _BatchProgress:
    """Reporter of a batch run: Rich bars (jobs overall, steps of the current job) when stderr is a terminal,
    else one plain line per finished job on stderr."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.total = 0
        self.outputs = 0
        self.counts = {"done": 0, "skipped": 0, "failed": 0}

    def __enter__(self) -> "_BatchProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _info(self) -> str:
        c = self.counts
        return f"{self.outputs} output(s); {c['done']} done, {c['skipped']} skipped, {c['failed']} failed"

    def start(self, jobs: List[Any]) -> None:
        self.total = len(jobs)
        self.total_outputs = sum(job.num_images for job in jobs)
        if stderr.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                TimeRemainingColumn(), console=stderr, transient=False)
            self.bar.start()
            self.jobs_task = self.bar.add_task("jobs", total=self.total, info=self._info())
            self.step_task = self.bar.add_task("", total=1, info="", visible=False)

    def job_start(self, position: int, job: Any) -> None:
        self.current = job
        if self.bar is not None:
            self.bar.update(self.step_task, description=f"jobs[{job.index}]", completed=0, total=1, info="",
                            visible=True)

    def step(self, stage: str, step: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.step_task, description=f"jobs[{self.current.index}] {stage}", completed=step,
                            total=total, info="")

    def job_end(self, position: int, outcome: Any) -> None:
        self.counts[outcome.status] += 1
        if outcome.status == "done":
            self.outputs += len(outcome.outputs)
        head = f"job {position}/{self.total} (jobs[{outcome.job.index}] {outcome.job.image.name})"
        if outcome.status == "done":
            line = f"{head} done: {', '.join(_show(p) for p in outcome.outputs)} ({outcome.seconds:.1f} s)"
        elif outcome.status == "skipped":
            line = f"{head} skipped: outputs exist ({', '.join(_show(p) for p in outcome.outputs)})"
        else:
            line = f"{head} failed: {outcome.reason}"
        if self.bar is None:
            stderr.print(escape(line))
        else:
            if outcome.status == "failed":
                self.bar.console.print(f"[red]{escape(line)}[/red]")
            self.bar.update(self.jobs_task, completed=position, info=self._info())
            self.bar.update(self.step_task, visible=False)


def _run_batch(title: str, mine: List[Any], total_jobs: int, shard: Any, manifest_path: Path, base_seed: int,
               overwrite: bool, json_out: bool, engine: Any) -> int:
    """Run this shard's jobs; print the summary (table, or JSON with --json). Returns the exit code: 0, 1 when
    a job failed, 130 when interrupted."""
    import time

    from .batch import BatchRunner, Interrupts, Manifest, counts

    started = time.perf_counter()
    interrupted = False
    with Interrupts() as interrupts, _BatchProgress() as progress:
        runner = BatchRunner(engine, Manifest(manifest_path), shard, base_seed, overwrite, progress, interrupts)
        try:
            runner.run(mine)
        except KeyboardInterrupt:
            interrupted = True
    outcomes = sorted(runner.outcomes, key=lambda o: o.job.index)
    tally = counts(outcomes)
    part = f" (shard {shard.label} of {total_jobs} jobs)" if shard.size > 1 else ""
    if json_out:
        _print_json({"batch": title, "manifest": str(manifest_path), "shard": shard.as_dict(),
                     "base_seed": base_seed, "jobs": [o.as_dict() for o in outcomes],
                     "counts": {**tally, "total": len(mine)}, "counters": engine.counter_snapshot(),
                     "interrupted": interrupted, "elapsed_s": round(time.perf_counter() - started, 3)})
    console = stderr if json_out else stdout
    if outcomes:
        console.print(_summary_table(f"{escape(title)}{part}", outcomes))
    console.print(f"{tally['done']} done, {tally['skipped']} skipped, {tally['failed']} failed of {len(mine)} "
                  f"job(s); manifest: {escape(_show(manifest_path))}", soft_wrap=True)
    if interrupted:
        interrupts.reported = True
        stderr.print(f"[red]interrupted[/red] after {len(outcomes)} of {len(mine)} jobs; rerun the same command "
                     f"to finish (finished outputs are kept and skipped)")
        return 130
    if tally["failed"] and os.environ.get("MS_ROLE") == "MS_WORKER":
        # msrun kills every other worker as soon as one exits non-zero: a failed job must not stop the others.
        stderr.print(f"[yellow]warning:[/yellow] {tally['failed']} job(s) failed (see above and the manifest); this "
                     f"msrun worker exits with code 0 so that msrun does not stop the other workers")
        return 0
    return 1 if tally["failed"] else 0


def _summary_table(title: str, outcomes: List[Any]) -> Table:
    table = Table(title=title)
    for column in ("job", "image", "status", "outputs / reason", "seed", "time"):
        table.add_column(column, overflow="fold")
    colours = {"done": "green", "skipped": "dim", "failed": "red"}
    for o in outcomes:
        what = "\n".join(_show(p) for p in o.outputs) if o.status != "failed" else (o.reason or "")
        seed = "-" if o.seed is None else f"{o.seed}" + (" (derived)" if o.seed_source == "derived" else "")
        table.add_row(str(o.job.index), escape(_show(o.job.image)), f"[{colours[o.status]}]{o.status}[/]",
                      escape(what), seed, f"{o.seconds:.1f} s" if o.status != "skipped" else "")
    return table


def _plan_table(title: str, plan: List[Any]) -> Table:
    """The plan of a batch: one row per job (image, mask, prompt, outputs, settings, status)."""
    from .masks import format_size

    table = Table(title=f"{escape(title)}: {len(plan)} job(s)", show_lines=True)
    for column in ("job", "image", "mask", "prompt", "outputs", "settings"):
        table.add_column(column, overflow="fold")
    for job, size, run_plan, (seed, seed_source), skipped in plan:
        prompt = escape(job.prompt)
        if job.negative_prompt:
            prompt += f"\n[dim]negative: {escape(job.negative_prompt)}[/dim]"
        mask = ([_show(job.mask)] if job.mask is not None else []) + list(job.mask_rects) \
            + (["inverted"] if job.invert_mask else []) + ([f"grow {job.grow}"] if job.grow else []) \
            + ([f"feather {job.feather}"] if job.feather else [])
        width, height = run_plan.working_size
        where = "" if run_plan.region == "full" else f", region {list(run_plan.region_box)}"
        settings = [f"{width}x{height}{where}", f"{job.steps} steps, cfg {job.guidance_scale:g}",
                    f"seed {seed}" + (" (derived)" if seed_source == "derived" else ""),
                    f"prior {job.prior_steps} steps, cfg {job.prior_guidance_scale:g}" if job.uses_prior
                    else f"embeds {_show(job.image_embeds)}"]
        outputs = escape("\n".join(_show(p) for p in job.outputs))
        if skipped:
            outputs += "\n[dim]skip: outputs exist[/dim]"
        table.add_row(str(job.index), f"{escape(_show(job.image))}\n[dim]{format_size(size)}[/dim]",
                      escape("\n".join(mask)), prompt, outputs, escape("\n".join(settings)))
    return table


def _show(path: Optional[Path]) -> str:
    """A path relative to the current directory when it is below it, else absolute."""
    if path is None:
        return "-"
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main() -> None:
    """Console-script entry point (``kandinsky``): see ``__main__.main``."""
    from .__main__ import main as run

    run()
