"""Everything the command line prints: Rich tables and progress bars on a terminal, and the ``--json`` documents.

cli.py parses and calls; the layers below return data (results, outcomes, plans, reports) and never print.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from typer.core import TyperGroup

from . import TOOL_NAME, interrupts
from .errors import UserError

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------ errors and warnings

# Click's exception classes, whether Typer uses click itself or ships its own copy of it.
_CLICK_ERRORS = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError, ClickException = _CLICK_ERRORS["UsageError"], _CLICK_ERRORS["ClickException"]

EXIT_USER_ERROR = 2




def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    """Print one line ``error: <message>`` on stderr and exit with ``code``."""
    line = " ".join(str(message).split())
    typer.echo(f"error: {line}", err=True)
    sys.exit(code)


def warnings_as_lines(show_other: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning``: this package's warnings as one ``warning:`` line, others unchanged."""
    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None,
             line: Optional[str] = None) -> None:
        if category.__module__.split(".")[0] == __name__.split(".")[0]:
            stderr.print(f"[yellow]warning:[/yellow] {escape(' '.join(str(message).split()))}")
        else:
            show_other(message, category, filename, lineno, file, line)
    return show


#: What lowers the memory a command needs, for the "out of memory" line (commands without a model: none).
MEMORY_ADVICE = {
    "inpaint": "a smaller working size (--resolution, or --height/--width; --region mask for a small mask on a "
               "large image) or fewer --num-images",
    "batch": "smaller working sizes (the jobs' resolution, or height/width; region: mask) or fewer num_images",
    "prior": "fewer --num-images",
}
EXIT_OUT_OF_MEMORY = 1


class CommandGroup(TyperGroup):
    """The app's command group: one ``error:`` line and exit code 2 for every bad input."""

    command_name: Optional[str] = None

    def resolve_command(self, ctx: Any, args: List[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        type(self).command_name = name
        return name, command, rest

    def main(self, args: Any = None, prog_name: Optional[str] = None, complete_var: Optional[str] = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        interrupts.reset()
        type(self).command_name = None
        with warnings.catch_warnings():
            warnings.showwarning = warnings_as_lines(warnings.showwarning)
            try:
                rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
            except UserError as e:   # bad input: exit 2; a few failures that are not the input's carry their own
                fail(str(e), getattr(e, "exit_code", EXIT_USER_ERROR))
            except UsageError as e:
                if type(e).__name__ == "NoArgsIsHelpError":  # no arguments: the help was printed
                    if e.format_message():
                        typer.echo(e.format_message())
                    sys.exit(EXIT_USER_ERROR)
                hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
                fail(e.format_message() + hint, e.exit_code)
            except ClickException as e:
                fail(e.format_message(), e.exit_code)
            except (typer.Abort, KeyboardInterrupt):
                interrupts.exit_interrupted()
            except (MemoryError, RuntimeError) as e:
                if not isinstance(e, MemoryError) and "memory" not in str(e).lower():
                    raise
                advice = MEMORY_ADVICE.get(type(self).command_name or "")
                fail("out of memory: this run needs more memory than the machine has free"
                      + (f"; the model's working memory grows with the working size: try {advice}" if advice else
                         "; free some memory and run it again"), EXIT_OUT_OF_MEMORY)
        code = rv if isinstance(rv, int) else 0
        if code == interrupts.EXIT_INTERRUPTED:   # Click's own Ctrl-C handling, or the batch's report
            interrupts.exit_interrupted("" if interrupts.reported else None)
        if standalone_mode:
            sys.exit(code)
        return rv


# ------------------------------------------------------------------------------------------ results

def emit(json_out: bool, document: Any, lines: List[str]) -> None:
    """A command's result: the JSON ``document`` with --json, else ``lines`` (Rich markup) on stdout."""
    if json_out:
        print_json(document)
    else:
        for line in lines:
            stdout.print(line, soft_wrap=True)


def wrote(paths) -> List[str]:
    return [f"wrote {escape(str(p))}" for p in paths]


class StepProgress:
    """A Rich progress bar per stage on a terminal (stderr); nothing when stderr is not a TTY."""

    def __init__(self) -> None:
        self.bar = None
        self.tasks: dict = {}

    def __enter__(self) -> "StepProgress":
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


def print_json(obj: Any) -> None:
    from .files import to_json

    typer.echo(to_json(obj, indent=2))


class BatchProgress:
    """Reporter of a batch run: Rich bars (jobs overall, steps of the current job) when stderr is a terminal,
    else one plain line per finished job on stderr."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.total = 0
        self.outputs = 0
        self.counts = {"done": 0, "skipped": 0, "failed": 0}

    def __enter__(self) -> "BatchProgress":
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
            line = f"{head} done: {', '.join(show(p) for p in outcome.outputs)} ({outcome.seconds:.1f} s)"
        elif outcome.status == "skipped":
            line = f"{head} skipped: {outcome.reason}" + (f" ({', '.join(show(p) for p in outcome.outputs)})"
                                                          if outcome.outputs else "")
        else:
            line = f"{head} failed: {outcome.reason}"
        if self.bar is None:
            stderr.print(escape(line))
        else:
            if outcome.status == "failed":
                self.bar.console.print(f"[red]{escape(line)}[/red]")
            self.bar.update(self.jobs_task, completed=position, info=self._info())
            self.bar.update(self.step_task, visible=False)


def summary_table(title: str, outcomes: List[Any]) -> Table:
    table = Table(title=title)
    for column in ("job", "image", "status", "outputs / reason", "seed", "time"):
        table.add_column(column, overflow="fold")
    colours = {"done": "green", "skipped": "dim", "failed": "red"}
    for o in outcomes:
        what = "\n".join(show(p) for p in o.outputs) if o.outputs else (o.reason or "")
        seed = "-" if o.seed is None else f"{o.seed}" + (" (derived)" if o.seed_source == "derived" else "")
        table.add_row(str(o.job.index), escape(show(o.job.image)), f"[{colours[o.status]}]{o.status}[/]",
                      escape(what), seed, f"{o.seconds:.1f} s" if o.status != "skipped" else "")
    return table


def plan_table(title: str, plan: List[Any]) -> Table:
    """The plan of a batch: one row per job (image, mask, prompt, outputs, settings, status)."""
    from .masks import format_size

    table = Table(title=f"{escape(title)}: {len(plan)} job(s)", show_lines=True)
    for column in ("job", "image", "mask", "prompt", "outputs", "settings"):
        table.add_column(column, overflow="fold")
    for job, size, run_plan, (seed, seed_source), skipped in plan:
        prompt = escape(job.prompt or "")
        if job.mix:
            prompt += "\n[dim]mix: " + escape(", ".join(f"{what}={weight:g}" for what, weight in job.mix)) + "[/dim]"
        if job.negative_prompt:
            prompt += f"\n[dim]negative: {escape(job.negative_prompt)}[/dim]"
        mask = ([show(job.mask)] if job.mask is not None else []) + list(job.mask_rects) \
            + (["inverted"] if job.invert_mask else []) + ([f"grow {job.grow}"] if job.grow else []) \
            + ([f"feather {job.feather}"] if job.feather else [])
        width, height = run_plan.working_size
        where = "" if run_plan.region == "full" else f", region {list(run_plan.region_box)}"
        settings = [f"{width}x{height}{where}", f"{job.steps} steps, cfg {job.guidance_scale:g}",
                    f"seed {seed}" + (" (derived)" if seed_source == "derived" else ""),
                    f"prior {job.prior_steps} steps, cfg {job.prior_guidance_scale:g}" if job.uses_prior
                    else f"embeds {show(job.image_embeds)}"]
        outputs = escape("\n".join(show(p) for p in job.outputs))
        if skipped:
            outputs += "\n[dim]skip: outputs exist[/dim]"
        table.add_row(str(job.index), f"{escape(show(job.image))}\n[dim]{format_size(size)}[/dim]",
                      escape("\n".join(mask)), prompt, outputs, escape("\n".join(settings)))
    return table


def show(path: Optional[Path]) -> str:
    """A path relative to the current directory when it is below it, else absolute."""
    if path is None:
        return "-"
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def info_tables(info: dict) -> list:
    """``kandinsky info`` as Rich tables: the machine, then the cached models."""
    machine = Table(title=f"{TOOL_NAME} info", show_header=False)
    machine.add_column("what", style="bold")
    machine.add_column("value", overflow="fold")
    machine.add_row("versions", ", ".join(f"{name} {version}" for name, version in info["versions"].items()))
    dev = info["device"]
    runs = "" if dev["device"] in dev["usable"] else " [red]cannot run here[/red]"
    machine.add_row("device", f"{dev['device']} ({dev['source']}){runs}; usable here: {', '.join(dev['usable'])}; "
                              f"MindSpore plugins: {', '.join(dev['plugins'])}"
                              + (f"; DEVICE_ID {dev['device_id']}" if dev["device_id"] else ""))
    threads = info["threads"]
    machine.add_row("threads", f"{threads['cpus_usable']} of {threads['cpus']} CPUs usable; MindSpore runtime "
                               f"threads {threads['mindspore_runtime_threads']}")
    machine.add_row("memory", f"{decimal(info['memory']['available_bytes'])} free of "
                              f"{decimal(info['memory']['total_bytes'])}")
    low = info["bfloat16"]
    machine.add_row("bfloat16", ("available" if low["available"] else escape(f"unavailable: {low['reason']}")) +
                    f"; --dtype auto runs {low['auto']}")
    machine.add_row("HF cache", escape(info["cache"]["hub_cache"]))
    machine.add_row("tool cache", escape(f"{info['cache']['tool_cache']} "
                                         f"({info['cache']['tool_cache_bytes'] / 1024 ** 2:.0f} MB; constants and "
                                         "compiled graphs, safe to delete)"))
    cached = info["cache"]["models"]
    models = Table(title="cached models" if cached else "cached models: none yet (see `kandinsky download`)")
    for column in ("model", "refs", "commit", "size", "float32", "float16"):
        models.add_column(column, overflow="fold")
    for m in cached:
        if m.get("damaged"):
            models.add_row(escape(m["repo_id"]), escape(", ".join(m["refs"]) or "-"), (m["commit"] or "-")[:12], "-",
                           f"[red]damaged[/red]: {escape(m['damaged'])}", "[red]damaged[/red]")
            continue
        ready = ["[green]complete[/green]" if m["complete"][dtype] else "[yellow]incomplete[/yellow]"
                 for dtype in ("float32", "float16")]
        models.add_row(escape(m["repo_id"]), escape(", ".join(m["refs"]) or "-"), m["commit"][:12],
                       decimal(m["bytes"]), *ready)
    return [machine, models]


def download_table(snapshots: Dict[str, Any], dtype: str):
    """What is cached where and how big: a Rich table with one row per model, then each model's folder."""
    from rich.console import Group

    from .download import cache_dir

    table = Table(title=f"models for --dtype {dtype} in the Hugging Face cache {escape(str(cache_dir()))}")
    for column in ("", "model", "revision", "commit", "files", "size"):
        table.add_column(column, overflow="fold")
    for role, s in snapshots.items():
        commit = "local folder" if s.commit is None else s.commit[:12]
        table.add_row(role, escape(s.model), escape(s.revision or "-"), commit, str(len(s.files)),
                      decimal(s.total_bytes))
    folders = [f"{role}: {escape(str(s.folder))}" for role, s in snapshots.items()]
    return Group(table, *folders)


def batch_report(summary, json_out: bool) -> int:
    """The end of a batch run: its table and counts (on stderr with --json, whose document goes to stdout), the
    interrupt line that says what was written. Returns the exit code: 0, 1 when a job failed, 130 interrupted."""
    tally, mine = summary.counts, summary.total
    if json_out:
        print_json(summary.as_dict())
    console = stderr if json_out else stdout
    if summary.outcomes:
        console.print(summary_table(f"{escape(summary.title)}{summary.shard_part}", summary.outcomes))
    console.print(f"{tally['done']} done, {tally['skipped']} skipped, {tally['failed']} failed of {mine} "
                  f"job(s); manifest: {escape(show(summary.manifest_path))}", soft_wrap=True)
    if summary.interrupted:
        interrupts.reported = True   # the module's flag: the exit path prints no second line
        text = interrupts.written_text([show(Path(p)) for p in interrupts.written])
        if summary.manifest_lines:
            text = ("wrote no output, " if not interrupts.written else text + " and ") \
                + f"{summary.manifest_lines} line(s) of the manifest {show(summary.manifest_path)}"
        stderr.print(f"[red]interrupted[/red] after {len(summary.outcomes)} of {mine} jobs: {escape(text)}; rerun "
                     f"the same command to finish (finished outputs are kept and skipped)", soft_wrap=True)
        return interrupts.EXIT_INTERRUPTED
    if tally["failed"] and os.environ.get("MS_ROLE") == "MS_WORKER":
        # msrun kills every other worker as soon as one exits non-zero: a failed job must not stop the others.
        stderr.print(f"[yellow]warning:[/yellow] {tally['failed']} job(s) failed (see above and the manifest); this "
                     f"msrun worker exits with code 0 so that msrun does not stop the other workers")
        return 0
    return 1 if tally["failed"] else 0


def check_report(title: str, check) -> None:
    """``batch --check``: the plan table and the ``ok`` line."""
    stdout.print(plan_table(title, check.rows))
    skip = sum(1 for *_, skipped in check.rows if skipped)
    images = sum(job.num_images for job, *_, skipped in check.rows if not skipped)
    unchecked = (f" (not checked: sampler steps and memory, because {escape(check.unchecked)})"
                 if check.unchecked else "")
    stdout.print(f"[green]ok[/green]: {len(check.rows)} job(s), {images} image(s) to generate"
                 + (f", {skip} job(s) skipped (outputs exist)" if skip else "") + f"; nothing was run{unchecked}.",
                 soft_wrap=True)
