"""Stage 1 as the engine runs it: a :class:`requests.PriorRequest` -> embeddings with a loaded prior pipeline, in
this process, or in a child process that is compiled (fast) and returns all its memory when it exits.

MindSpore never frees a compiled network's parameters, so an engine that must free the prior before the decoder
loads would otherwise run it eagerly (about 2.3x slower per step at real size). A spawned child loads the prior,
compiles it, makes every requested embedding and exits; the parent receives the arrays through a pipe. The child
ignores SIGINT: Ctrl-C reaches the whole process group, and the parent, which handles it, kills the child.
"""
from __future__ import annotations

import multiprocessing
import signal
import traceback
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .cache import Constants, compile_cache
from .errors import UserError
from .files import IMAGE_SUFFIXES, load_image
from .noise import Noise, random_seed
from .precision import Precision
from .requests import PriorRequest

Embeddings = Tuple[np.ndarray, np.ndarray]
StepCallback = Optional[Callable[[int, int], None]]


def load_prior(root: Path, precision: Precision, mode: str):
    """The prior pipeline of a folder, with the tool's constants cache (the all-zero image's embedding)."""
    from .prior_pipeline import PriorPipeline

    return PriorPipeline(root, precision.ms_dtype, mode, bf16=precision.bf16, constants=Constants(),
                         dtype_name=precision.name)


def mix_items(req: PriorRequest) -> Tuple[list, List[float]]:
    """The texts and images of ``--mix`` (with the prompt at weight 1), images decoded (once: those the request
    holds are used as they are)."""
    items, weights = [], []
    if req.prompt:
        items.append(req.prompt)
        weights.append(1.0)
    for i, (what, weight) in enumerate(req.mix):
        if i in req.mix_images:
            items.append(req.mix_images[i])      # decoded when the request was checked
        else:
            items.append(load_image(what) if Path(what).suffix.lower() in IMAGE_SUFFIXES else what)
        weights.append(weight)
    return items, weights


def embed(prior, req: PriorRequest, step: StepCallback = None) -> Embeddings:
    """(image_embeds, negative_image_embeds) float32 (N, E) of one request with a loaded prior pipeline."""
    compile_cache.set_hint(f"prior images={req.num_images} negative={req.negative_prompt is not None} "
                           f"mix={len(req.mix or ())} guided={req.prior_guidance_scale > 1.0}")
    noise = Noise(req.seed if req.seed is not None else random_seed())
    common = dict(num_inference_steps=req.prior_steps, guidance_scale=req.prior_guidance_scale, noise=noise,
                  callback=step)
    if req.mix:
        items, weights = mix_items(req)
        emb, neg = prior.interpolate(items, weights, num_images_per_prompt=req.num_images,
                                     negative_prior_prompt=req.negative_prompt, **common)
        emb = np.repeat(emb, neg.shape[0], axis=0)
    else:
        emb, neg = prior(req.prompt, negative_prompt=req.negative_prompt, num_images_per_prompt=req.num_images,
                         **common)
    return emb.astype(np.float32), neg.astype(np.float32)


# ------------------------------------------------------------------------------------------ the child process

def _child(conn, root: str, precision: Precision, mode: str, device: Optional[str], device_id: Optional[int],
           requests: list, compile_cache_allowed: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from .system import select_device

        compile_cache.allowed = compile_cache_allowed
        target = select_device(device, device_id)
        compile_cache.configure(target, mode, precision.name)
        prior = load_prior(Path(root), precision, mode)
        for n, values in enumerate(requests):
            def step(i: int, total: int, n=n) -> None:
                conn.send(("progress", n, i, total))
            emb, neg = embed(prior, PriorRequest(values), step)
            conn.send(("result", n, emb, neg))
        conn.send(("done",))
    except UserError as e:
        conn.send(("user_error", str(e)))
    except BaseException:   # a bug in the child: hand its traceback to the parent
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


def run_prior_in_child(root: Path, precision: Precision, mode: str, device: Optional[str],
                       device_id: Optional[int], requests: Sequence[PriorRequest],
                       progress: Optional[Callable[[int, int, int], None]] = None) -> List[Embeddings]:
    """The embeddings of ``requests`` (seeds set), made by a spawned child process.
    ``progress(request_index, step, total)`` is called as the child reports its steps."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, name="kandinsky-prior", daemon=True,
                              args=(child, str(root), precision, mode, device, device_id,
                                    [r.values() for r in requests], compile_cache.allowed))
    process.start()
    child.close()
    try:
        return _receive(parent, process, len(requests), progress)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()


def _receive(parent, process, count: int, progress) -> List[Embeddings]:
    results: List[Optional[Embeddings]] = [None] * count
    while True:
        try:
            message = parent.recv()
        except EOFError:
            process.join()
            raise RuntimeError(f"the prior process ended without its results (exit code {process.exitcode})")
        kind = message[0]
        if kind == "progress" and progress is not None:
            progress(*message[1:])
        elif kind == "result":
            results[message[1]] = (message[2], message[3])
        elif kind == "user_error":
            raise UserError(message[1])
        elif kind == "crash":
            raise RuntimeError(f"the prior process failed:\n{message[1]}")
        elif kind == "done":
            process.join()
            return results   # type: ignore[return-value]
