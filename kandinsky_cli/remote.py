"""``kandinsky inpaint --server URL``: the job runs on a ``kandinsky serve`` (models warm there), the result is
written here with the same files, metadata and exit codes as a local run.

Local files are checked here first with the same functions as a local run (the image, the mask, the outputs); the
image and the mask are uploaded as they are; the server validates the job with the CLI's messages (its one line
comes back as ``error: ...``, exit 2). The PNGs are written atomically (all or none) with the server's parameters,
where ``image``, ``mask`` and ``out`` are the local paths, as a local run would record them.
"""
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .errors import UserError

SERVER_VARIABLE = "KANDINSKY_SERVER"
TOKEN_VARIABLE = "KANDINSKY_TOKEN"
API = "/api/v1"


class ServerWarning(UserWarning):
    """A warning the server gave about the job (e.g. a resized mask): printed as one ``warning:`` line."""


class ServerFailure(UserError):
    """The server failed or could not be reached (not the user's input): one ``error:`` line, exit code 1."""

    exit_code = 1


@dataclass
class RemoteResult:
    outputs: List[Path]
    grid: Optional[Path]
    seed: int
    parameters: dict
    timings: Dict[str, float] = field(default_factory=dict)


def _json_value(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def _error_line(response) -> str:
    try:
        return str(response.json()["error"])
    except Exception:
        return f"HTTP {response.status_code} from the server"


def _check(response, url: str) -> None:
    if response.status_code < 400:
        return
    line = _error_line(response)
    if response.status_code in (400, 413, 422):
        raise UserError(line)
    if response.status_code in (401, 403):
        raise UserError(f"{line} (the token comes from ${TOKEN_VARIABLE})")
    raise ServerFailure(f"{url}: {line}")


def _local_checks(job: Dict[str, Any]):
    """The local run's checks and messages for the local files: the inputs open, the outputs can be written.
    Returns (outputs, grid path or None)."""
    from .files import check_writable_output, load_image, numbered_paths
    from .masks import read_mask_file

    load_image(job["image"])
    if job.get("mask") is not None:
        read_mask_file(job["mask"])
    out = Path(job["out"])
    outputs = numbered_paths(out, job.get("num_images") or 1)
    grid = out.with_name(f"{out.stem}-grid.png") if job.get("save_grid") else None
    for path in outputs + ([grid] if grid else []):
        check_writable_output(path)
    return outputs, grid


def inpaint_remote(server: str, job: Dict[str, Any], progress: Callable[[str, int, int], None]) -> RemoteResult:
    """Run ``job`` (the command line's checked values: image, out, prompt, ...) on the server at ``server``."""
    import httpx

    from .files import atomic_set, save_png

    if job.get("image_embeds") is not None or job.get("negative_image_embeds") is not None:
        raise UserError("--image-embeds/--negative-image-embeds cannot be sent with --server (the server runs the "
                        "prior itself)")
    image, mask = Path(job["image"]), job.get("mask")
    outputs, grid = _local_checks(job)
    base = server.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = {k: _json_value(v) for k, v in job.items() if k not in ("image", "mask", "out") and v is not None}
    files = {"image": (str(image), image.read_bytes(), "application/octet-stream")}
    if mask is not None:
        files["mask"] = (str(mask), Path(mask).read_bytes(), "application/octet-stream")
    with httpx.Client(base_url=base + API, headers=headers, timeout=httpx.Timeout(60.0)) as client:
        try:
            response = client.post("/inpaint", files=files, data={"job": json.dumps(payload)})
        except httpx.HTTPError as e:
            raise ServerFailure(f"cannot reach the server at {base}: {e}") from None
        _check(response, base)
        accepted = response.json()
        job_id = accepted["id"]
        for line in accepted.get("warnings") or []:
            warnings.warn(ServerWarning(line))
        try:
            state = _follow(client, job_id, progress)
        except KeyboardInterrupt:
            try:
                client.delete(f"/jobs/{job_id}", timeout=5.0)
            except httpx.HTTPError:
                pass
            raise
        except httpx.HTTPError as e:
            raise ServerFailure(f"lost the server at {base} while job {job_id} ran: {e}") from None
        if state["status"] != "done":
            raise ServerFailure(f"job {job_id} {state['status']} on the server"
                                + (f": {state['error']}" if state.get("error") else ""))
        local = {"image": str(job["image"]), "mask": None if mask is None else str(mask), "out": str(job["out"])}
        images = [_download(client, url, local) for url in state["images"]]
        grid_image = _download(client, state["grid"], local) if grid and state.get("grid") else None
    if len(images) != len(outputs):
        raise ServerFailure(f"the server returned {len(images)} image(s) for {len(outputs)} output(s)")
    with atomic_set() as written:     # every output (and the grid) or none of them
        for path, (pixels, parameters) in zip(outputs, images):
            save_png(path, pixels, parameters, into=written)
        if grid_image is not None:
            save_png(grid, grid_image[0], grid_image[1], into=written)
    first = images[0][1] if images else {}
    return RemoteResult(outputs, grid if grid_image is not None else None, state["seed"],
                        {k: v for k, v in first.items() if k != "index"}, state.get("timings") or {})


def _follow(client, job_id: str, progress: Callable[[str, int, int], None]) -> dict:
    """Read the job's event stream until it ends; returns the job's final state."""
    event = None
    with client.stream("GET", f"/jobs/{job_id}/events", timeout=httpx_timeout()) as stream:
        _check(stream, str(client.base_url))
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event is not None:
                data = json.loads(line[5:])
                if event == "progress":
                    progress(data["stage"], data["step"], data["total"])
                elif event in ("done", "failed", "cancelled"):
                    return data
    response = client.get(f"/jobs/{job_id}")
    _check(response, str(client.base_url))
    return response.json()


def httpx_timeout():
    import httpx

    return httpx.Timeout(60.0, read=120.0)   # the server sends a keep-alive comment every 15 s


def _download(client, url: str, local: Dict[str, Any]):
    """(pixels, parameters) of a PNG of the server, the parameters naming the local files."""
    import numpy as np
    from PIL import Image

    from .files import PNG_KEY_PARAMETERS

    response = client.get(url[len(API):] if url.startswith(API) else url)
    _check(response, str(client.base_url))
    with Image.open(io.BytesIO(response.content), formats=["PNG"]) as im:
        im.load()
        parameters = json.loads(im.text.get(PNG_KEY_PARAMETERS, "{}"))
        pixels = np.asarray(im)
    parameters.update({k: v for k, v in local.items() if k in parameters})
    return pixels, parameters


def inpaint_on_server(server: str, job: Dict[str, Any], engine_flags: List[str],
                      progress: Callable[[str, int, int], None]) -> RemoteResult:
    """``inpaint --server``: the job runs on the server, whose models are its own (engine flags are refused)."""
    if engine_flags:
        raise UserError(f"{', '.join(engine_flags)}: with --server the models and how they run are the server's "
                        f"(give them to kandinsky serve)")
    return inpaint_remote(server, job, progress)
