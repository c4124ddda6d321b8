"""The ``kandinsky`` command line (Typer): each command parses its options and calls the layers below.

Every command is one ``@app.command()`` function whose options come from options.py. Bad input raises
:class:`UserError` anywhere below; :class:`output.CommandGroup` turns it (and Typer's own usage errors) into
exactly one line ``error: <message>`` on stderr with exit code 2, never a traceback; everything printed is in
output.py. Nothing heavy is imported here: ``--help`` must stay fast; commands that run a model import
MindSpore inside their function.
"""
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape

from . import TOOL_NAME, interrupts, options
from .errors import UserError
from .flags import (BaseSeed, BatchOutDir, CheckOption, HostOption, ImagesDir, MasksDir, NoAuth, Overwrite,
                    PortOption, QueueOption, ServeDir, ServerOption, ShardOption, TokenOption)
from .output import CommandGroup, StepProgress, emit, print_json, stderr, stdout, wrote

app = typer.Typer(
    cls=CommandGroup,
    name=TOOL_NAME,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,     # plain help: option names are never cut and the text wraps at any width
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
    Masks: white = repaint, black = keep. Sizes are WIDTHxHEIGHT."""


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


def _engine_values(values: dict) -> dict:
    """The engine options, defaults for those not given."""
    return {**options.defaults(options.ENGINE_KEYS), **_given({k: values.get(k) for k in options.ENGINE_KEYS})}


def _engine(values: dict, device_id: Optional[int] = None):
    """A :class:`core.Kandinsky` from the engine options."""
    from .core import Kandinsky

    return Kandinsky(**_engine_values(values), device_id=device_id)


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
    from .files import load_image
    from .masks import check_mask_output, format_size, parse_size, save_change_map, save_mask
    from .requests import prepare_mask

    given = _given(values or {})
    values = {**options.defaults(o.key for o in MASK_OPTIONS), **given}
    check_mask_output(out)
    if image is not None and size is not None:
        raise UserError("give either IMAGE or --size, not both: the mask has the size of the image")
    if image is None and size is None:
        raise UserError("the mask needs a size: give an IMAGE or --size WIDTHxHEIGHT (e.g. --size 768x768)")
    size_hw = (lambda im: (im.height, im.width))(load_image(image)) if image is not None else parse_size(size)
    hard, plan, spec, change = prepare_mask(values, size_hw)   # change: --soft's map
    options.warn_ignored(values, given)
    params = {"command": "mask", "image": str(image) if image is not None else None,
              "size": format_size(hard.shape), **(spec.parameters() if spec else {}), **plan.parameters()}
    save_mask(out, hard, params) if change is None else save_change_map(out, change, {**params, "soft": True})
    interrupts.note_written([out])
    pixels, (width, height) = int(hard.sum()), plan.working_size
    emit(json_out, {"out": str(out), "size": list(hard.shape[::-1]), "pixels": pixels, **plan.parameters()},
         [f"wrote {escape(str(out))}: {format_size(hard.shape)}, {pixels} pixels to repaint "
          f"({100.0 * hard.mean():.1f}%); working size {width}x{height}, region {plan.region} "
          f"box {list(plan.region_box)}"])


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
    interrupts.note_written([out])
    stdout.print(f"wrote {escape(str(out))}: {rows}x{cols} grid, {grid.width}x{grid.height} pixels")


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
    from .core import prior_outputs, write_prior_outputs
    from .requests import prior_request

    values = dict(values or {})
    if prompt_text is not None:
        if values.get("prompt") is not None:
            raise UserError("give the prompt once: as PROMPT or as --prompt, not both")
        values["prompt"] = options.check_value("prompt", prompt_text, "PROMPT")
    prior_outputs(out_dir, name)   # every output location, before any model loads
    request = prior_request(values)
    engine = _engine(values)
    engine.root("prior")   # find (or download) the model before the progress bar is drawn
    with StepProgress() as progress:
        emb, neg = engine.run_prior(request, progress)
    parameters = engine.prior_parameters(request)
    paths = write_prior_outputs(out_dir, name, emb, neg, parameters)
    interrupts.note_written(paths.values())
    emit(json_out, {**paths, "seed": request.seed, "shape": list(emb.shape), "parameters": parameters},
         [f"seed {request.seed}; embeddings {emb.shape[0]}x{emb.shape[1]}", *wrote(paths.values())])


@app.command("inpaint")
@options.command(INPAINT_OPTIONS + ENGINE_OPTIONS)
def inpaint_command(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", show_default=False, help="Input image (PNG/JPEG/WebP).")],
    json_out: JsonOption = False,
    server: ServerOption = None,
    values: Optional[dict] = None,
) -> None:
    """Repaint the masked area of IMAGE from a prompt (runs the prior first unless embeddings are given).

    Example: kandinsky inpaint cat.png --mask-rect 0:250,250:518 --prompt "a hat"
    """
    from .requests import InpaintRequest

    values = dict(values or {})
    job = _given({k: values.get(k) for k in options.JOB_KEYS})
    job["image"] = Path(options.check_value("image", str(image), "IMAGE"))
    job.setdefault("out", Path(f"{image.stem}-inpainted.png"))
    if "prompt" not in job and not job.get("mix"):
        raise UserError("missing option '--prompt' (what to paint), or --mix")
    request = InpaintRequest(job)
    options.check_mask_given(job)                # the rules first, then what the options leave without effect
    options.warn_ignored(request.values(), job)
    with StepProgress() as progress:
        if server:   # the job runs on a `kandinsky serve` (remote.py), with the server's models
            from .remote import inpaint_on_server

            result = inpaint_on_server(server, job, [options.flag_of(k) for k in options.ENGINE_KEYS
                                                     if values.get(k) is not None], progress)
        else:
            engine = _engine(values)
            result = engine.run(engine.prepare(request), progress)   # inputs and model folders checked first
    written = result.outputs + ([result.grid] if result.grid else [])
    interrupts.note_written(written)
    emit(json_out, {"outputs": [str(p) for p in result.outputs], "grid": str(result.grid) if result.grid else None,
                    "seed": result.seed, "timings": result.timings, "parameters": result.parameters},
         [f"seed {result.seed}", *wrote(written)])


@app.command("batch")
@options.command(FOLDER_OPTIONS + ENGINE_OPTIONS,
                 panels={o.key: ("Folder mode", "Folder mode: ") for o in FOLDER_OPTIONS})
def batch_command(
    jobs_file: Annotated[Optional[Path], typer.Argument(
        metavar="JOBS.yaml", show_default=False,
        help="Batch file (see configs/batch-example.yaml). Or folder mode: --images DIR instead.")] = None,
    out_dir: BatchOutDir = None,
    overwrite: Overwrite = False,
    shard: ShardOption = None,
    base_seed: BaseSeed = 0,
    check: CheckOption = False,
    images: ImagesDir = None,
    masks: MasksDir = None,
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
    from .batch import MANIFEST_NAME, check_batch, is_msrun_scheduler, load_jobs, parse_shard, run_batch
    from .output import BatchProgress, batch_report, check_report

    if shard is not None and shard.strip().lower() == "auto" and is_msrun_scheduler():
        # msrun runs the command once more as its scheduler process: the workers do the jobs.
        stderr.print("msrun scheduler process (MS_ROLE=MS_SCHED): the workers run the jobs; nothing to do here")
        return
    values = dict(values or {})
    folder_values = {o.key: values.pop(o.key) for o in FOLDER_OPTIONS}
    shard_spec = parse_shard(shard)
    jobs, manifest_dir, title = load_jobs(jobs_file, images, masks, folder_values, out_dir)
    mine = shard_spec.select(jobs)
    if check:
        part = f" (shard {shard_spec.label}: {len(mine)} of {len(jobs)})" if shard_spec.size > 1 else ""
        check_report(title + part, check_batch(mine, base_seed, overwrite, _engine_values(values),
                                               folder=images is not None))
        return
    with BatchProgress() as progress:
        summary = run_batch(title, mine, len(jobs), shard_spec, Path(manifest_dir).absolute() / MANIFEST_NAME,
                            base_seed, overwrite, _engine(values, shard_spec.device_id), progress)
    code = batch_report(summary, json_out)
    if code:
        raise typer.Exit(code)


@app.command("serve")
@options.command(ENGINE_OPTIONS)
def serve_command(host: HostOption = "127.0.0.1", port: PortOption = 7860, out_dir: ServeDir = None,
                  token: TokenOption = None, no_auth: NoAuth = False, queue_size: QueueOption = 8,
                  values: Optional[dict] = None) -> None:
    """Keep the models loaded behind an HTTP API (/api/v1) and a web page to paint masks (/); Ctrl-C stops it.

    Example: kandinsky serve --port 7860, then open http://127.0.0.1:7860/
    """
    from .server import serve

    serve(_engine_values(values or {}), host, port, out_dir, token, no_auth, queue_size, stderr.print)


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
    from .download import check_line, fetch_models, report
    from .output import download_table

    values = _engine_values(values or {})
    dtype = values["dtype"]
    snapshots = fetch_models(values["prior_model"], values["decoder_model"], revision, dtype, values["offline"],
                             check)
    if json_out:
        print_json(report(snapshots, dtype))
    else:
        stdout.print(escape(check_line(snapshots, dtype)) if check else download_table(snapshots, dtype),
                     soft_wrap=True)


@app.command("info")
@options.command([options.BY_KEY["device"]])
def info_command(
    json_out: JsonOption = False,
    values: Optional[dict] = None,
) -> None:
    """Versions, device, threads, memory, and the models in the Hugging Face cache (complete per --dtype or not).

    Example: kandinsky info --json
    """
    from .output import info_tables
    from .system import machine_info

    info = machine_info((values or {}).get("device"))
    if json_out:
        print_json(info)
    else:
        for table in info_tables(info):
            stdout.print(table)
