"""The command line's own flags, which are not job options (those are options.py's): batch's, serve's and
inpaint's --server, declared once for cli.py."""
from pathlib import Path
from typing import Annotated, Optional

import typer

# serve's own options, and inpaint's --server
ServerOption = Annotated[Optional[str], typer.Option(
    "--server", envvar="KANDINSKY_SERVER", metavar="URL", show_default=False,
    help="Run the job on a `kandinsky serve` at URL (also $KANDINSKY_SERVER; its token from $KANDINSKY_TOKEN) "
         "and write the result here, as a local run would.")]
HostOption = Annotated[str, typer.Option("--host", metavar="ADDR", help="Address to listen on. Other than loopback "
                                         "(127.0.0.1, ::1, localhost) it needs --token or --no-auth.")]
PortOption = Annotated[int, typer.Option("--port", min=0, max=65535, metavar="N", help="Port (0: any free one).")]
ServeDir = Annotated[Optional[Path], typer.Option(
    "--out-dir", metavar="DIR", show_default=False,
    help="Where uploads and outputs go, one folder per job id (default: serve/ in the tool's cache folder, "
         "~/.cache/kandinsky/serve or $KANDINSKY_CACHE/serve).")]
TokenOption = Annotated[Optional[str], typer.Option(
    "--token", envvar="KANDINSKY_TOKEN", metavar="TOKEN", show_default=False,
    help="Every API call needs 'Authorization: Bearer TOKEN' (also $KANDINSKY_TOKEN).")]
NoAuth = Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback --host without a token.")]
QueueOption = Annotated[int, typer.Option("--queue", min=1, max=1000, metavar="N",
                                          help="Jobs that may wait while one runs; more: HTTP 503.")]
# batch's own options
BatchOutDir = Annotated[Optional[Path], typer.Option(
    "--out-dir", metavar="DIR", show_default=False,
    help="Output folder (and manifest.jsonl). With a batch file: relative 'out' values and the default "
         "<image stem>.png go into it; default: outputs/ next to the batch file. Required with --images.")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Run every job again; by default a job whose outputs all exist is skipped.")]
ShardOption = Annotated[Optional[str], typer.Option(
    "--shard", metavar="K/N|auto", show_default=False,
    help="Run only the jobs with index % N == K (0 <= K < N). 'auto': K and N from msrun's environment "
         "(RANK_ID/RANK_SIZE, device DEVICE_ID).")]
BaseSeed = Annotated[int, typer.Option(
    "--base-seed", min=0, max=2**32 - 1, metavar="N",
    help="Jobs without a seed get one derived from N and the job's index (reproducible).")]
CheckOption = Annotated[bool, typer.Option("--check", help="Validate the jobs and their inputs and print the plan "
                                                    "(with what would be skipped); loads no model.")]
ImagesDir = Annotated[Optional[Path], typer.Option(
    "--images", metavar="DIR", show_default=False, rich_help_panel="Folder mode",
    help="Folder mode: one job per PNG/JPEG/WebP file of DIR (sorted by name), output "
         "OUT-DIR/<stem>.png.")]
MasksDir = Annotated[Optional[Path], typer.Option(
    "--masks", metavar="DIR", show_default=False, rich_help_panel="Folder mode",
    help="Folder mode: the mask of each image is the file of DIR with the image's stem (.png/.jpg/.jpeg/"
         ".webp/.npy); an image without one fails, the others run.")]
