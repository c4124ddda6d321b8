"""The batch file schema, in one place: reading, validating and filling in defaults.

A batch file is YAML (``yaml.safe_load`` semantics, bounded by :mod:`.yamlsafe`) with two top-level keys::

    defaults:          # optional: any job key, applied to every job (a job's own value wins)
      steps: 50
    jobs:              # required: a non-empty list of jobs
      - image: cat.png
        mask_rects: ["0:250,250:518"]
        prompt: a hat

Job keys are the options of ``kandinsky inpaint`` (``options.JOB_KEYS``, each with the type, range and default of
its definition in options.py; ``configs/batch-example.yaml`` documents every one). Relative paths resolve against
the YAML file's directory, except ``out`` when an output folder is given to :func:`load_batch`.

With ``num_images`` > 1 the outputs are ``<out stem>-1.png`` ... ``<out stem>-N.png`` (as ``kandinsky inpaint``). Two jobs
may not write the same file, and no output may overwrite an input. Every error is a :class:`UserError`
naming the file, the job and the key, e.g. ``jobs.yaml: jobs[2].steps: must be an integer from 1 to 1000,
got 0``.
"""
from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import options
from .errors import UserError
from .files import IMAGE_SUFFIXES, PathLike
from .options import JOB_KEYS, describe as _describe
from .requests import InpaintRequest, Prepared, prepare
from .yamlsafe import load_yaml_bounded

TOP_LEVEL_KEYS = ("defaults", "jobs")
INPUT_PATH_KEYS = ("image", "mask", "image_embeds", "negative_image_embeds")


# ------------------------------------------------------------------------------------------ jobs

class Job:
    """One validated job: its :class:`core.InpaintRequest` (every default filled in, every path absolute), where it
    came from, and why it cannot run when that is known before running it (folder mode: no mask for the image).
    The request's values read as the job's attributes (``job.steps``)."""

    def __init__(self, source: Path, index: int, request: InpaintRequest, problem: Optional[str] = None):
        self.source, self.index, self.request, self.problem = source, index, request, problem

    def __getattr__(self, key: str) -> Any:
        if key == "request":
            raise AttributeError(key)
        return getattr(self.request, key)

    @property
    def where(self) -> str:
        """``'jobs.yaml: jobs[2]'``: the prefix of every message about this job."""
        return f"{self.source}: jobs[{self.index}]"


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(mapping: Dict[Any, Any], where: str) -> Dict[str, Any]:
    """Check and convert every key of a job or of ``defaults``; ``where`` is e.g. ``'f.yaml: jobs[0]'``."""
    checked = {}
    for key, value in mapping.items():
        if key not in JOB_KEYS:
            raise UserError(f"{where}: unknown key {key!r}{_suggest(str(key), JOB_KEYS)}; "
                            f"known keys: {', '.join(JOB_KEYS)}")
        checked[key] = options.check_value(key, value, f"{where}.{key}")
    return checked


def _resolve(base: Path, value: Optional[str]) -> Optional[Path]:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _make_job(source: Path, base: Path, index: int, values: Dict[str, Any], out_dir: Optional[Path] = None) -> Job:
    where = f"{source}: jobs[{index}]"
    for key in JOB_KEYS:
        if options.BY_KEY[key].required and key not in values:
            raise UserError(f"{where}: missing required key {key!r}")
    try:
        options.check_mask_given(values)
        options.check_pairs(values)
    except options.Conflict as e:
        raise e.in_file(where) from None
    fields = {**options.defaults(JOB_KEYS), **values}
    for key in INPUT_PATH_KEYS:
        fields[key] = _resolve(base, fields[key])
        if fields[key] is not None and not fields[key].is_file():
            state = "not a file" if fields[key].exists() else "file not found"
            raise UserError(f"{where}.{key}: {state}: {fields[key]}")
    if out_dir is None:
        out = fields["out"] if fields["out"] is not None else f"outputs/{fields['image'].stem}.png"
        fields["out"] = _resolve(base, out)
    else:
        fields["out"] = _resolve(out_dir, fields["out"] if fields["out"] is not None else f"{fields['image'].stem}.png")
    try:
        return Job(source, index, InpaintRequest(fields))
    except options.Conflict as e:
        raise e.in_file(where) from None


def _warn_ignored(source: Path, defaults: Dict[str, Any], jobs: List[Dict[str, Any]]) -> None:
    """One ``warning:`` line per job key that has no effect (options.ignored); a key of ``defaults`` is named
    there, once, when it has no effect in any job (where some job uses it, it is not a mistake)."""
    from_defaults: Dict[str, List[options.Conflict]] = {}
    for index, job in enumerate(jobs):
        values = {**defaults, **job}
        for conflict in options.ignored(values, values):
            key = conflict.keys[0]
            if key in job:
                warnings.warn(options.IgnoredOption(conflict.in_file(f"{source}: jobs[{index}]")))
            else:
                from_defaults.setdefault(key, []).append(conflict)
    for key, conflicts in from_defaults.items():
        if len(conflicts) == len(jobs):
            warnings.warn(options.IgnoredOption(f"{conflicts[0].in_file(f'{source}: defaults')} (in every job)"))


def _check_outputs(jobs: List[Job]) -> None:
    """No two jobs write the same file and no output overwrites an input."""
    written: Dict[Path, int] = {}
    inputs = {p.resolve() for job in jobs for p in (job.image, job.mask, job.image_embeds,
                                                     job.negative_image_embeds) if p is not None}
    for job in jobs:
        for path in job.outputs:
            key = path.resolve()
            if key in written:
                raise UserError(f"{job.where}.out: {path} is also written by jobs[{written[key]}]; "
                                f"give each job its own 'out'")
            if key in inputs:
                raise UserError(f"{job.where}.out: {path} would overwrite an input file")
            written[key] = job.index


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` of a file within the bounds of :mod:`.yamlsafe` (size, aliases, depth, duplicate
    keys, no tags), with a one-line UserError for a missing file, a syntax error or a refused input."""
    return load_yaml_bounded(path, "batch file")


def load_batch(path: PathLike, out_dir: Optional[PathLike] = None) -> List[Job]:
    """Read and validate a batch file: the jobs with defaults filled in and paths resolved.

    Checks structure, keys, types, ranges, required keys, that input files exist and that outputs do not
    collide. It does not open images; :func:`prepare_job` does that.

    Outputs: without ``out_dir`` a relative ``out`` is relative to the YAML file's directory and the
    default is ``outputs/<image stem>.png`` there; with ``out_dir`` (``kandinsky batch --out-dir``) a
    relative ``out`` is relative to ``out_dir`` and the default is ``<image stem>.png`` in it.
    """
    source = Path(path)
    data = read_yaml(source)
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping with 'jobs:' (and optionally 'defaults:'), "
                        f"got {_describe(data) if data is not None else 'an empty file'}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise UserError(f"{source}: unknown top-level key {key!r}{_suggest(str(key), TOP_LEVEL_KEYS)}; "
                            f"expected 'defaults' and 'jobs'")
    defaults = data.get("defaults")
    defaults = {} if defaults is None else defaults
    if not isinstance(defaults, dict):
        raise UserError(f"{source}: defaults: must be a mapping of job keys, got {_describe(defaults)}")
    defaults = _check_keys(defaults, f"{source}: defaults")
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        got = "nothing" if jobs is None else _describe(jobs)
        raise UserError(f"{source}: jobs: must be a non-empty list of jobs, got {got}")
    base = source.resolve().parent
    result, checked = [], []
    for index, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise UserError(f"{source}: jobs[{index}]: must be a mapping of job keys, got {_describe(job)}")
        checked.append(_check_keys(job, f"{source}: jobs[{index}]"))
        result.append(_make_job(source, base, index, {**defaults, **checked[-1]}, _absolute(out_dir)))
    _check_outputs(result)
    _warn_ignored(source, defaults, checked)
    return result


def _absolute(path: Optional[PathLike]) -> Optional[Path]:
    return None if path is None else Path(os.path.abspath(Path(path).expanduser()))


def prepare_job(job: Job, seed: Optional[int] = None) -> Prepared:
    """:func:`requests.prepare` of a job (with ``seed`` when given): its inputs opened once, as the run uses them;
    a UserError names the file, the job and the key at fault."""
    if job.problem is not None:
        raise UserError(f"{job.where}: {job.problem}")
    try:
        return prepare(job.request if seed is None else job.request.replace(seed=seed))
    except UserError as e:
        raise in_job(job, e) from None


def in_job(job: Job, error: UserError) -> UserError:
    """``error`` worded for a batch file: ``FILE: jobs[i].KEY: ...`` (a rule between keys names its keys)."""
    if isinstance(error, options.Conflict):
        return error.in_file(job.where)
    key = getattr(error, "key", None)
    return UserError(f"{job.where}.{key}: {error}" if key else f"{job.where}: {error}")


# ------------------------------------------------------------------------------------------ folder mode

#: Mask files matched to images by stem in folder mode (``--masks DIR``).
MASK_SUFFIXES = IMAGE_SUFFIXES + (".npy",)


def _folder_files(folder: Path, suffixes: Tuple[str, ...], option: str) -> List[Path]:
    """The files of ``folder`` (not below it) with one of ``suffixes`` (any case), sorted by name; hidden
    files are ignored."""
    if not folder.is_dir():
        state = "not a folder" if folder.exists() else "folder not found"
        raise UserError(f"{option}: {state}: {folder}")
    return sorted((p for p in folder.iterdir()
                   if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()),
                  key=lambda p: p.name)


def _folder_values(values: Dict[str, Any], mask_dir: Optional[Path]) -> Dict[str, Any]:
    """Folder mode's job options from the command line, checked as flags (with the cross-option rules)."""
    given = {key: value for key, value in values.items() if value is not None}
    for key in given:
        if options.FOLDER not in options.BY_KEY[key].scopes:
            raise ValueError(f"folder mode has no option for {key!r}")
    checked = options.check_flags(given)
    if "prompt" not in checked:
        raise UserError("folder mode (--images) needs --prompt TEXT")
    if mask_dir is not None and checked.get("mask") is not None:
        raise UserError("give --masks DIR (one mask per image) or --mask FILE (one mask for all), not both")
    options.check_mask_given(checked, masks_dir=mask_dir is not None)
    options.check_pairs(checked)
    options.warn_ignored({**options.defaults(JOB_KEYS), **checked}, checked)
    if checked.get("mask") is not None:
        mask_file = Path(checked["mask"]).expanduser()
        if not mask_file.is_file():
            raise UserError(f"--mask: {'not a file' if mask_file.exists() else 'file not found'}: {mask_file}")
        checked["mask"] = Path(os.path.abspath(mask_file))
    return checked


def _image_files(source: Path) -> List[Path]:
    """Folder mode's input images, sorted by name; two with one stem would write one output."""
    files = _folder_files(source, IMAGE_SUFFIXES, "--images")
    if not files:
        raise UserError(f"--images: no PNG, JPEG or WebP image in {source}")
    by_stem: Dict[str, List[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    for stem, same in by_stem.items():
        if len(same) > 1:
            raise UserError(f"--images: {' and '.join(p.name for p in same)} in {source} would write the same "
                            f"output {stem}.png; rename one of them")
    return files


def folder_jobs(images: PathLike, values: Dict[str, Any], out_dir: PathLike,
                masks: Optional[PathLike] = None) -> List[Job]:
    """Folder mode: one job per PNG/JPEG/WebP file of ``images`` (sorted by name), the same as a batch file.

    ``values`` holds job keys from the command line (``None`` = the default), shared by every job; they are
    checked like a batch file's and errors name the option (``--steps: must be ...``). The mask is
    ``values['mask']`` and/or ``values['mask_rects']`` for every image, or with ``masks`` the file of that
    folder with the image's stem (``cat.png`` -> ``masks/cat.png``, ``.jpg``, ``.jpeg``, ``.webp`` or
    ``.npy``); rectangles, if given, are added to it. An image without a mask file (or with several) becomes a
    job with a :attr:`Job.problem`: it fails when run, the others run. Output: ``out_dir/<image stem>.png``.
    """
    source = Path(images)
    mask_dir = Path(masks) if masks is not None else None
    checked = _folder_values(values, mask_dir)
    files = _image_files(source)
    mask_files: Dict[str, List[Path]] = {}
    if mask_dir is not None:
        if mask_dir.resolve() == source.resolve():
            raise UserError("--masks must be another folder than --images (masks are matched by file name)")
        for path in _folder_files(mask_dir, MASK_SUFFIXES, "--masks"):
            mask_files.setdefault(path.stem, []).append(path)
    out_base = Path(os.path.abspath(Path(out_dir).expanduser()))
    defaults = options.defaults(JOB_KEYS)
    jobs = []
    for index, image in enumerate(files):
        fields = {**defaults, **checked, "image": Path(os.path.abspath(image)),
                  "out": out_base / f"{image.stem}.png"}
        problem = None
        if mask_dir is not None:
            found = mask_files.get(image.stem, [])
            if len(found) == 1:
                fields["mask"] = Path(os.path.abspath(found[0]))
            elif not found:
                names = [image.stem + suffix for suffix in MASK_SUFFIXES]
                problem = f"no mask for {image.name} in {mask_dir} (expected {', '.join(names[:-1])} or {names[-1]})"
            else:
                problem = f"several masks for {image.name} in {mask_dir}: {', '.join(p.name for p in found)}"
        jobs.append(Job(source, index, InpaintRequest(fields), problem))
    _check_outputs(jobs)
    return jobs
