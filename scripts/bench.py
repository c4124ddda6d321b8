#!/usr/bin/env python3
"""CPU benchmark of the MindSpore port, side by side with diffusers/torch when they are installed.

    python scripts/bench.py                                   # default workloads, float32 and float16
    python scripts/bench.py --workload unet-step-256 --dtype float32 --repeats 5
    python scripts/bench.py --workload pipeline-real-768-50   # off by default: minutes and ~20 GB
    python scripts/bench.py --json --no-torch                 # one JSON object per line, MindSpore only
    python scripts/bench.py --list                            # what each workload measures

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
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from random_weights import copy_support_files, random_weights, write_component

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmark the checkout this script belongs to
    sys.path.insert(0, str(REPO))

DEFAULT_FIXTURE = REPO / "tests" / "fixtures" / "kandinsky21-tiny"
DEFAULT_CONFIGS = REPO / "configs" / "kandinsky-2-1"
DTYPES = ("float32", "float16")
GB = 1024 ** 3
CFG_BATCH = 2          # prompt + negative, as every guided step runs
TEXT_LEN = 77          # both tokenizers pad to 77
PROMPT_TOKENS = 12     # random "prompt" tokens before the end token; the rest is padding
STEP_T = 500           # timestep used for single-step rows (cost does not depend on it)
SEED = 0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> Optional[int]:
    """Resident set size of this process in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_hwm() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class RssSampler:
    """Max RSS seen by a background thread polling /proc/self/statm every ``interval`` seconds.

    The kernel's own high-water mark (VmHWM, reset on entry) is read on exit too: it also catches transients
    shorter than the polling interval or during calls that hold the GIL.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = self.peak = self.hwm = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        rss = current_rss()
        if rss is not None:
            self.peak = rss if self.peak is None else max(self.peak, rss)
            self.samples += 1

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._hwm_ok = _reset_hwm()
        self.start = current_rss()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._hwm_ok:
            self.hwm = _read_hwm()
        return False


def free_memory() -> None:
    gc.collect()
    try:  # give freed heap pages back to the OS so the next row's RSS starts low
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    workload: str
    impl: str
    dtype: str
    times: List[float] = field(default_factory=list)
    first_call_s: Optional[float] = None
    peak_rss: Optional[int] = None
    start_rss: Optional[int] = None
    hwm: Optional[int] = None
    skipped: Optional[str] = None
    ratio: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None

    def as_json(self) -> dict:
        gb = (lambda b: None if b is None else round(b / GB, 3))
        out = {"workload": self.workload, "impl": self.impl, "dtype": self.dtype,
               "median_s": self.median, "min_s": min(self.times) if self.times else None,
               "max_s": max(self.times) if self.times else None, "peak_rss_gb": gb(self.peak_rss),
               "repeats": len(self.times), "first_call_s": self.first_call_s, "rss_start_gb": gb(self.start_rss),
               "peak_rss_hwm_gb": gb(self.hwm)}
        if self.impl == "mindspore":
            out["ratio"] = self.ratio
        if self.skipped:
            out["skipped"] = self.skipped
        out.update(self.extra)
        return out


def measure(workload: str, impl: str, dtype: str, run: Callable[[], object], warmup: int, repeats: int,
            extra: dict) -> Row:
    row = Row(workload, impl, dtype, extra=dict(extra))
    with RssSampler() as mem:
        for i in range(warmup):
            t0 = time.perf_counter()
            run()
            if i == 0:
                row.first_call_s = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            row.times.append(time.perf_counter() - t0)
    row.peak_rss, row.start_rss, row.hwm = mem.peak, mem.start, mem.hwm
    return row


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}"


# --------------------------------------------------------------------------------------------------------------
# shared inputs (numpy, identical for both frameworks)
# --------------------------------------------------------------------------------------------------------------
def read_config(configs: Path, name: str) -> dict:
    return json.loads((configs / name).read_text(encoding="utf-8"))


def public(config: dict) -> dict:
    """A config without diffusers' private keys (``_class_name``, ``_diffusers_version``)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def np_dtype(dtype: str):
    return np.float16 if dtype == "float16" else np.float32


def randn(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def clip_ids(vocab: int, batch: int = 1) -> np.ndarray:
    """(batch, 77) ids as the CLIP tokenizer makes them: bos, prompt tokens, eos, then eos padding."""
    rng = np.random.default_rng(SEED)
    bos, eos = vocab - 2, vocab - 1
    ids = np.full((batch, TEXT_LEN), eos, np.int64)
    ids[:, 0] = bos
    ids[:, 1:1 + PROMPT_TOKENS] = rng.integers(300, vocab - 2, (batch, PROMPT_TOKENS))
    return ids


def xlmr_ids(vocab: int, batch: int = 1):
    """(ids, mask), (batch, 77): <s>, prompt tokens, </s>, then <pad> (id 1) with mask 0."""
    rng = np.random.default_rng(SEED)
    ids = np.ones((batch, TEXT_LEN), np.int64)
    ids[:, 0] = 0
    ids[:, 1:1 + PROMPT_TOKENS] = rng.integers(5, vocab, (batch, PROMPT_TOKENS))
    ids[:, 1 + PROMPT_TOKENS] = 2
    mask = np.zeros((batch, TEXT_LEN), np.int64)
    mask[:, :2 + PROMPT_TOKENS] = 1
    return ids, mask


def inpaint_inputs(size: int, embed_dim: int):
    """uint8 image (size, size, 3), float mask (size, size) with a centred square to repaint, embeds (1, E) x2."""
    rng = np.random.default_rng(SEED)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
    return image, mask, randn(rng, (1, embed_dim)), randn(rng, (1, embed_dim))


# --------------------------------------------------------------------------------------------------------------
# weights: torch state dict -> MindSpore cell, or random
# --------------------------------------------------------------------------------------------------------------
def _set_param(param, arr: np.ndarray, dtype: str) -> None:
    """As model_io.load_weights: floats are cast to the run dtype, the Parameter's dtype follows."""
    import mindspore as ms

    if np.issubdtype(arr.dtype, np.floating):
        arr = np.ascontiguousarray(arr, dtype=np_dtype(dtype))
        param.set_dtype(ms.float16 if dtype == "float16" else ms.float32)
    param.set_data(ms.Tensor(arr))


def copy_torch_weights(cell, module, dtype: str) -> None:
    """Every parameter of ``cell`` from ``module.state_dict()`` by name (extra torch keys are ignored)."""
    import torch

    state = module.state_dict()
    params = dict(cell.parameters_and_names())
    missing = [n for n in params if n not in state]
    if missing:
        raise RuntimeError(f"{type(module).__name__} has no tensor {missing[0]} (and {len(missing) - 1} more)")
    for name, param in params.items():
        tensor = state[name].detach()
        if tuple(tensor.shape) != tuple(param.shape):
            raise RuntimeError(f"{name}: torch shape {tuple(tensor.shape)} != MindSpore {tuple(param.shape)}")
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16 if dtype == "float16" else torch.float32)
        # a private copy: the MindSpore tensor must not keep the torch storage alive
        _set_param(param, np.array(tensor.numpy(), copy=True), dtype)
    cell.set_train(False)


def fill_random(cell, dtype: str, seed: int = SEED) -> None:
    params = dict(cell.parameters_and_names())
    for name, arr in random_weights(cell, np.random.default_rng(seed)):
        _set_param(params[name], arr, dtype)
    cell.set_train(False)


# --------------------------------------------------------------------------------------------------------------
# model builders (real sizes, from configs/kandinsky-2-1)
# --------------------------------------------------------------------------------------------------------------
class Ctx:
    """Run-wide settings handed to every workload."""

    def __init__(self, args, torch_ok: bool):
        self.configs: Path = args.configs
        self.fixture: Path = args.fixture
        self.mode: str = args.mode
        self.torch: bool = torch_ok
        self.tmpdir = args.tmpdir

    def config(self, name: str) -> dict:
        return read_config(self.configs, name)


def torch_dtype(dtype: str):
    import torch

    return torch.float16 if dtype == "float16" else torch.float32


def _torch_init(build):
    """Build a torch module with torch's random init (seeded), eval mode."""
    import torch

    torch.manual_seed(SEED)
    with torch.no_grad():
        module = build()
    return module.eval()


def torch_clip_text(ctx: Ctx):
    import transformers

    cfg = public(ctx.config("text_encoder.json"))
    cfg.pop("architectures", None)
    return _torch_init(lambda: transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**cfg)))


def torch_mclip(ctx: Ctx):
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    cfg = public(ctx.config("text_encoder_mclip.json"))
    for key in ("architectures", "model_type"):
        cfg.pop(key, None)
    dims = dict(transformerDimSize=cfg.pop("transformerDimensions", 1024), imageDimSize=cfg.pop("numDims", 768))
    return _torch_init(lambda: MultilingualCLIP(MCLIPConfig(**dims, **cfg)))


def torch_prior(ctx: Ctx):
    import diffusers

    return _torch_init(lambda: diffusers.PriorTransformer(**public(ctx.config("prior.json"))))


def torch_unet(ctx: Ctx):
    import diffusers

    return _torch_init(lambda: diffusers.UNet2DConditionModel(**public(ctx.config("unet.json"))))


def torch_movq(ctx: Ctx):
    import diffusers

    return _torch_init(lambda: diffusers.VQModel(**public(ctx.config("movq.json"))))


def ms_clip_text(ctx: Ctx):
    from kandinsky_cli.clip import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(ctx.config("text_encoder.json"))


def ms_mclip(ctx: Ctx):
    from kandinsky_cli.mclip import MultilingualCLIP

    return MultilingualCLIP(ctx.config("text_encoder_mclip.json"))


def ms_prior(ctx: Ctx):
    from kandinsky_cli.prior import PriorTransformer

    return PriorTransformer(ctx.config("prior.json"))


def ms_unet(ctx: Ctx):
    from kandinsky_cli.unet import UNet2DConditionModel

    return UNet2DConditionModel(ctx.config("unet.json"))


def ms_movq(ctx: Ctx):
    from kandinsky_cli.movq import VQModel

    return VQModel.from_config(ctx.config("movq.json"))


# --------------------------------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------------------------------
class Group:
    """Workloads sharing models: the models are built once per dtype, torch rows first, then MindSpore rows.

    ``torch_models(ctx, dtype)`` -> dict of torch objects (already cast); ``ms_models(ctx, dtype, torch_models)``
    -> dict of MindSpore objects (weights copied from the torch models, or random when they are None).
    Each workload has ``torch_run(models, dtype)`` / ``ms_run(models, dtype, mode)`` returning the zero-argument
    callable that is timed (inputs are prepared outside it).
    """

    torch_models: Callable = None
    ms_models: Callable = None

    def __init__(self, key: str, ms_source: str = "weights copied from the torch models, or random without torch"):
        self.key = key
        self.ms_source = ms_source


@dataclass
class Workload:
    name: str
    group: Group
    what_ms: str
    what_torch: str
    torch_run: Callable
    ms_run: Callable
    default: bool = True


def _cast(module, dtype: str):
    return module.to(torch_dtype(dtype))


def _component_group(key: str, torch_build, ms_build, name: str) -> Group:
    group = Group(key)

    def torch_models(ctx, dtype):
        return {name: _cast(torch_build(ctx), dtype)}

    def ms_models(ctx, dtype, tmodels):
        cell = ms_build(ctx)
        if tmodels is not None:
            copy_torch_weights(cell, tmodels[name], dtype)
        else:
            fill_random(cell, dtype)
        return {name: cell}

    group.torch_models, group.ms_models = torch_models, ms_models
    return group


def _ms_tensor(arr, dtype=None):
    import mindspore as ms

    return ms.Tensor(arr if dtype is None else np.asarray(arr, dtype=np_dtype(dtype)))


def _torch_tensor(arr, dtype=None):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if dtype is None else t.to(torch_dtype(dtype))


# -- CLIP text (prior) ------------------------------------------------------------------------------------------
def clip_text_torch(models, dtype):
    import torch

    model = models["clip"]
    ids = _torch_tensor(clip_ids(model.config.vocab_size))

    def run():
        with torch.no_grad():
            out = model(input_ids=ids)
        return out.text_embeds, out.last_hidden_state
    return run


def clip_text_ms(models, dtype, mode):
    from kandinsky_cli.layers import compiled

    cell = models["clip"]
    fn = compiled(cell, mode)
    ids = _ms_tensor(clip_ids(cell.config["vocab_size"]).astype(np.int32))

    def run():
        embeds, hidden = fn(ids)
        return embeds.asnumpy(), hidden.asnumpy()
    return run


# -- M-CLIP (decoder) -------------------------------------------------------------------------------------------
def mclip_torch(models, dtype):
    import torch

    model = models["mclip"]
    ids, mask = (_torch_tensor(a) for a in xlmr_ids(model.config.vocab_size))

    def run():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask)
    return run


def mclip_ms(models, dtype, mode):
    from kandinsky_cli.layers import compiled

    cell = models["mclip"]
    fn = compiled(cell, mode)
    ids, mask = (_ms_tensor(a.astype(np.int32)) for a in xlmr_ids(cell.config.vocab_size))

    def run():
        embeds, hidden = fn(ids, mask)
        return embeds.asnumpy(), hidden.asnumpy()
    return run


# -- prior step ---------------------------------------------------------------------------------------------------
def _prior_inputs(embedding_dim: int, num_embeddings: int):
    rng = np.random.default_rng(SEED)
    x = randn(rng, (CFG_BATCH, embedding_dim))
    proj = randn(rng, (CFG_BATCH, embedding_dim))
    hidden = randn(rng, (CFG_BATCH, num_embeddings, embedding_dim))
    mask = np.zeros((CFG_BATCH, num_embeddings), bool)
    mask[:, :2 + PROMPT_TOKENS] = True
    return x, proj, hidden, mask


def prior_torch(models, dtype):
    import torch

    model = models["prior"]
    cfg = model.config
    x, proj, hidden, mask = _prior_inputs(cfg.embedding_dim, cfg.num_embeddings)
    x, proj, hidden = (_torch_tensor(a, dtype) for a in (x, proj, hidden))
    mask, t = _torch_tensor(mask), torch.tensor(STEP_T)

    def run():
        with torch.no_grad():
            return model(x, timestep=t, proj_embedding=proj, encoder_hidden_states=hidden,
                         attention_mask=mask).predicted_image_embedding
    return run


def prior_ms(models, dtype, mode):
    from kandinsky_cli.layers import compiled

    cell = models["prior"]
    fn = compiled(cell, mode)
    x, proj, hidden, mask = _prior_inputs(cell.embedding_dim, cell.config["num_embeddings"])
    # as PriorPipeline: every input (the boolean text mask too) goes in as a tensor of the run dtype
    x, proj, hidden, mask = (_ms_tensor(a, dtype) for a in (x, proj, hidden, mask))

    def run():
        return fn(x, cell.timestep_input(STEP_T, CFG_BATCH), proj, hidden, mask).asnumpy()
    return run


# -- UNet step ----------------------------------------------------------------------------------------------------
def _unet_inputs(cfg: dict, latent: int):
    rng = np.random.default_rng(SEED)
    sample = randn(rng, (CFG_BATCH, cfg["in_channels"], latent, latent))
    hidden = randn(rng, (CFG_BATCH, TEXT_LEN, cfg["encoder_hid_dim"]))
    text = randn(rng, (CFG_BATCH, cfg["cross_attention_dim"]))
    image = randn(rng, (CFG_BATCH, cfg["cross_attention_dim"]))
    return sample, hidden, text, image


def unet_torch(size: int, factor: int):
    def make(models, dtype):
        import torch

        model = models["unet"]
        sample, hidden, text, image = (_torch_tensor(a, dtype) for a in _unet_inputs(model.config, size // factor))
        t = torch.tensor(STEP_T)

        def run():
            with torch.no_grad():
                return model(sample, t, encoder_hidden_states=hidden,
                             added_cond_kwargs={"text_embeds": text, "image_embeds": image}, return_dict=False)[0]
        return run
    return make


def unet_ms(size: int, factor: int):
    def make(models, dtype, mode):
        from kandinsky_cli.layers import compiled

        cell = models["unet"]
        fn = compiled(cell, mode)
        sample, hidden, text, image = (_ms_tensor(a, dtype) for a in _unet_inputs(cell.config, size // factor))

        def run():  # as InpaintPipeline's denoising loop: host timestep embedding, compiled UNet, to numpy
            return fn(sample, cell.time_proj(np.full(CFG_BATCH, STEP_T)), hidden, text, image).asnumpy()
        return run
    return make


# -- MoVQ ---------------------------------------------------------------------------------------------------------
def _movq_factor(cfg: dict) -> int:
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def movq_encode_torch(size: int):
    def make(models, dtype):
        import torch

        model = models["movq"]
        x = _torch_tensor(np.clip(randn(np.random.default_rng(SEED), (1, 3, size, size)), -1, 1), dtype)

        def run():
            with torch.no_grad():
                return model.encode(x).latents
        return run
    return make


def movq_encode_ms(size: int):
    def make(models, dtype, mode):
        from kandinsky_cli.layers import compiled

        cell = models["movq"]
        fn = compiled(cell.encode_latents, mode)
        x = _ms_tensor(np.clip(randn(np.random.default_rng(SEED), (1, 3, size, size)), -1, 1), dtype)
        return lambda: fn(x).asnumpy()
    return make


def movq_decode_torch(size: int):
    def make(models, dtype):
        import torch

        model = models["movq"]
        f = _movq_factor(model.config)
        z = _torch_tensor(randn(np.random.default_rng(SEED), (1, model.config.latent_channels, size // f, size // f)),
                          dtype)

        def run():
            with torch.no_grad():
                return model.decode(z, force_not_quantize=True).sample
        return run
    return make


def movq_decode_ms(size: int):
    def make(models, dtype, mode):
        from kandinsky_cli.layers import compiled

        cell = models["movq"]
        f = cell.scale_factor
        fn = compiled(cell.decode_latents, mode)
        z = _ms_tensor(randn(np.random.default_rng(SEED), (1, cell.config["latent_channels"], size // f, size // f)),
                       dtype)
        return lambda: fn(z).asnumpy()
    return make


# -- tiny fixture: loading and the whole decoder pipeline ------------------------------------------------------------
def _quiet_diffusers():
    import warnings

    import diffusers
    import transformers

    # from_pretrained(torch_dtype=...) is what every diffusers version understands; 0.42 asks for dtype= instead
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _torch_pipelines(fixture: Path, dtype: str, prior: bool = True):
    from diffusers import KandinskyInpaintPipeline, KandinskyPriorPipeline

    _quiet_diffusers()
    inpaint = KandinskyInpaintPipeline.from_pretrained(fixture / "inpaint", torch_dtype=torch_dtype(dtype))
    inpaint.set_progress_bar_config(disable=True)
    if not prior:
        return inpaint
    return inpaint, KandinskyPriorPipeline.from_pretrained(fixture / "prior", torch_dtype=torch_dtype(dtype))


def _ms_dtype(dtype: str):
    import mindspore as ms

    return ms.float16 if dtype == "float16" else ms.float32


def load_tiny_torch(ctx):
    def make(models, dtype):
        return lambda: _torch_pipelines(ctx.fixture, dtype)
    return make


def load_tiny_ms(ctx):
    def make(models, dtype, mode):
        from kandinsky_cli.inpaint_pipeline import InpaintPipeline
        from kandinsky_cli.prior_pipeline import PriorPipeline

        return lambda: (InpaintPipeline(ctx.fixture / "inpaint", _ms_dtype(dtype), mode),
                        PriorPipeline(ctx.fixture / "prior", _ms_dtype(dtype), mode))
    return make


PROMPT = "a red hat, 4k photo"


def pipeline_torch(size: int, steps: int):
    def make(models, dtype):
        import torch

        pipe = models["pipe"]
        image, mask, emb, neg = inpaint_inputs(size, pipe.unet.config.cross_attention_dim)
        emb, neg = _torch_tensor(emb), _torch_tensor(neg)

        def run():
            with torch.no_grad():
                return pipe(PROMPT, image, mask, emb, neg, height=size, width=size, num_inference_steps=steps,
                            guidance_scale=4.0, generator=torch.Generator().manual_seed(SEED),
                            output_type="np").images
        return run
    return make


def pipeline_ms(size: int, steps: int):
    def make(models, dtype, mode):
        from kandinsky_cli.noise import Noise

        pipe = models["pipe"]
        image, mask, emb, neg = inpaint_inputs(size, pipe.image_embed_dim)
        # models loaded, as the torch row: keep the text encoder, but encode the texts again on every call
        pipe.keep_text_encoder = True

        def run():
            pipe.clear_text_cache()
            return pipe(PROMPT, image, mask, emb, neg, height=size, width=size, num_inference_steps=steps,
                        guidance_scale=4.0, noise=Noise(SEED))
        return run
    return make


def _tiny_pipeline_group(ctx: Ctx) -> Group:
    group = Group("tiny-pipeline", "from the fixture")

    def torch_models(ctx, dtype):
        return {"pipe": _torch_pipelines(ctx.fixture, dtype, prior=False)}

    def ms_models(ctx, dtype, tmodels):
        from kandinsky_cli.inpaint_pipeline import InpaintPipeline

        return {"pipe": InpaintPipeline(ctx.fixture / "inpaint", _ms_dtype(dtype), ctx.mode)}

    group.torch_models, group.ms_models = torch_models, ms_models
    return group


# -- real-size decoder pipeline (random weights written to a temporary pipeline folder for MindSpore) -------------
def _real_pipeline_group(ctx: Ctx) -> Group:
    group = Group("real-pipeline")
    components = (("text_encoder", "text_encoder_mclip.json", "model", torch_mclip, ms_mclip),
                  ("unet", "unet.json", "diffusion_pytorch_model", torch_unet, ms_unet),
                  ("movq", "movq.json", "diffusion_pytorch_model", torch_movq, ms_movq))

    def torch_models(ctx, dtype):
        from diffusers import DDIMScheduler, KandinskyInpaintPipeline
        from transformers import AutoTokenizer

        _quiet_diffusers()
        parts = {}
        for name, _, _, build, _ in components:
            log(f"  building torch {name} ({dtype})")
            parts[name] = _cast(build(ctx), dtype)
        pipe = KandinskyInpaintPipeline(
            text_encoder=parts["text_encoder"], unet=parts["unet"], movq=parts["movq"],
            # the fixture's tokenizer (1002 pieces) stands in for XLM-R's: the text length is padded to 77 anyway
            tokenizer=AutoTokenizer.from_pretrained(ctx.fixture / "inpaint" / "tokenizer"),
            scheduler=DDIMScheduler.from_pretrained(ctx.fixture / "inpaint" / "scheduler"))
        pipe.set_progress_bar_config(disable=True)
        return {"pipe": pipe}

    def ms_models(ctx, dtype, tmodels):
        import mindspore as ms  # noqa: F401  (before the pipeline import, as the CLI does)
        from kandinsky_cli.inpaint_pipeline import InpaintPipeline

        # the folder lives as long as the models (removed when they are freed): the pipeline loads its text
        # encoder from it on first use
        folder = tempfile.TemporaryDirectory(prefix="kandinsky-bench-", dir=ctx.tmpdir)
        root = Path(folder.name)
        try:
            copy_support_files(ctx.fixture / "inpaint", root)
            for name, config_file, weights, _, ms_build in components:
                log(f"  writing {name} weights ({dtype}) to {root}")
                if tmodels is not None:
                    module = getattr(tmodels["pipe"], name)
                    state = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in module.state_dict().items()}
                else:
                    rng = np.random.default_rng(SEED)
                    state = {k: a.astype(np_dtype(dtype)) for k, a in random_weights(ms_build(ctx), rng)}
                write_component(root / name, ctx.config(config_file), weights, state)
                del state
                free_memory()
            if tmodels is not None:
                tmodels.clear()
                free_memory()
            log(f"  loading the MindSpore pipeline from {root}")
            return {"pipe": InpaintPipeline(root, _ms_dtype(dtype), ctx.mode), "folder": folder}
        except BaseException:
            folder.cleanup()
            raise

    group.torch_models, group.ms_models = torch_models, ms_models
    return group


# --------------------------------------------------------------------------------------------------------------
# the workload table
# --------------------------------------------------------------------------------------------------------------
PATTERNS = {
    "pipeline": re.compile(r"^pipeline-(tiny|real)-(\d+)-(\d+)$"),
    "unet": re.compile(r"^unet-step-(\d+)$"),
    "movq": re.compile(r"^movq-(encode|decode)-(\d+)$"),
}
DEFAULT_WORKLOADS = ("load-tiny", "pipeline-tiny-64-10", "clip-text", "mclip-text", "prior-step", "unet-step-256",
                     "unet-step-768", "movq-encode-768", "movq-decode-768")


class Registry:
    """Workload names -> Workload, with one Group object per shared model set."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.groups: Dict[str, Group] = {}

    def _group(self, key: str, make: Callable[[], Group]) -> Group:
        if key not in self.groups:
            self.groups[key] = make()
        return self.groups[key]

    def get(self, name: str) -> Workload:
        ctx = self.ctx
        if name == "load-tiny":
            group = self._group("none", lambda: _none_group())
            return Workload(name, group,
                            "InpaintPipeline(fixture/inpaint) + PriorPipeline(fixture/prior) construction "
                            "(tokenizers, configs, safetensors -> cells; graph compilation happens later, on first call)",
                            "KandinskyInpaintPipeline.from_pretrained + KandinskyPriorPipeline.from_pretrained",
                            load_tiny_torch(ctx), load_tiny_ms(ctx))
        if name == "clip-text":
            group = self._group("clip", lambda: _component_group("clip", torch_clip_text, ms_clip_text, "clip"))
            return Workload(name, group, "compiled CLIPTextModelWithProjection(ids (1, 77)) + asnumpy",
                            "transformers CLIPTextModelWithProjection(input_ids (1, 77))", clip_text_torch, clip_text_ms)
        if name == "mclip-text":
            group = self._group("mclip", lambda: _component_group("mclip", torch_mclip, ms_mclip, "mclip"))
            return Workload(name, group, "compiled MultilingualCLIP(ids, mask (1, 77)) + asnumpy",
                            "diffusers MultilingualCLIP(input_ids, attention_mask (1, 77))", mclip_torch, mclip_ms)
        if name == "prior-step":
            group = self._group("prior", lambda: _component_group("prior", torch_prior, ms_prior, "prior"))
            return Workload(name, group,
                            "compiled PriorTransformer(x (2, 768), timestep_input, proj (2, 768), hidden (2, 77, 768), "
                            "mask (2, 77)) + asnumpy",
                            "diffusers PriorTransformer(same inputs, bool mask)", prior_torch, prior_ms)
        m = PATTERNS["unet"].match(name)
        if m:
            size = int(m.group(1))
            factor = _movq_factor(ctx.config("movq.json"))
            self._check_size(name, size, factor)
            group = self._group("unet", lambda: _component_group("unet", torch_unet, ms_unet, "unet"))
            lat = size // factor
            return Workload(name, group,
                            f"compiled UNet(sample (2, 9, {lat}, {lat}), time_proj, hidden (2, 77, 1024), "
                            "text/image embeds (2, 768)) + asnumpy",
                            "diffusers UNet2DConditionModel(same inputs, added_cond_kwargs)",
                            unet_torch(size, factor), unet_ms(size, factor))
        m = PATTERNS["movq"].match(name)
        if m:
            op, size = m.group(1), int(m.group(2))
            factor = _movq_factor(ctx.config("movq.json"))
            self._check_size(name, size, factor)
            group = self._group("movq", lambda: _component_group("movq", torch_movq, ms_movq, "movq"))
            lat = size // factor
            if op == "encode":
                return Workload(name, group, f"compiled VQModel.encode_latents(image (1, 3, {size}, {size})) + asnumpy",
                                "diffusers VQModel.encode(image).latents", movq_encode_torch(size), movq_encode_ms(size))
            return Workload(name, group, f"compiled VQModel.decode_latents(latents (1, 4, {lat}, {lat})) + asnumpy",
                            "diffusers VQModel.decode(latents, force_not_quantize=True)",
                            movq_decode_torch(size), movq_decode_ms(size))
        m = PATTERNS["pipeline"].match(name)
        if m:
            kind, size, steps = m.group(1), int(m.group(2)), int(m.group(3))
            if size <= 0 or size % 64:
                raise SystemExit(f"error: workload {name}: the size must be a positive multiple of 64")
            if steps < 1:
                raise SystemExit(f"error: workload {name}: at least 1 step")
            if kind == "tiny":
                group = self._group("tiny-pipeline", lambda: _tiny_pipeline_group(ctx))
                where = "tiny fixture"
            else:
                group = self._group("real-pipeline", lambda: _real_pipeline_group(ctx))
                where = "real-size random weights"
            what = (f"{where}: one {size}x{size} inpaint call, {steps} DDIM steps, guidance 4, given image embeddings "
                    f"(M-CLIP x2, MoVQ encode, {steps} UNet steps, MoVQ decode); pipelines loaded beforehand")
            return Workload(name, group, "InpaintPipeline.__call__ -- " + what,
                            "KandinskyInpaintPipeline.__call__(output_type='np') -- same",
                            pipeline_torch(size, steps), pipeline_ms(size, steps), default=kind == "tiny")
        raise SystemExit(f"error: unknown workload {name!r}; known: {', '.join(DEFAULT_WORKLOADS)}, "
                         "unet-step-SIZE, movq-encode-SIZE, movq-decode-SIZE, pipeline-tiny-SIZE-STEPS, "
                         "pipeline-real-SIZE-STEPS")

    @staticmethod
    def _check_size(name: str, size: int, factor: int) -> None:
        if size <= 0 or size % (factor * 8):
            raise SystemExit(f"error: workload {name}: the size must be a positive multiple of {factor * 8}")


def _none_group() -> Group:
    group = Group("none", "nothing to build")
    group.torch_models = lambda ctx, dtype: {}
    group.ms_models = lambda ctx, dtype, tmodels: {}
    return group


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


def _timed_rows(workloads: List[Workload], impl: str, how: str, dtype: str, build_error: Optional[str],
                extra: dict, args, make_run: Callable):
    """One Row per workload of one implementation: skipped if its models failed to build or its run raised."""
    for wl in workloads:
        if build_error:
            yield Row(wl.name, impl, dtype, skipped=f"build failed: {build_error}", extra=extra)
            continue
        log(f"{wl.name} {impl} {dtype}{how}: {args.warmup} warm-up + {args.repeats} timed")
        try:
            row = measure(wl.name, impl, dtype, make_run(wl), args.warmup, args.repeats, extra)
            log(f"  median {row.median:.3f} s, peak RSS {(row.peak_rss or 0) / GB:.2f} GB")
        except Exception as exc:
            row = Row(wl.name, impl, dtype, skipped=short_error(exc), extra=extra)
            log(f"  skipped: {row.skipped}")
        free_memory()
        yield row


def run_group(ctx: Ctx, group: Group, workloads: List[Workload], dtype: str, args, emit) -> None:
    """Torch rows (models built once), copy weights, free torch, MindSpore rows, free: one (group, dtype) unit."""
    extra_ms = {"mode": ctx.mode, "warmup": args.warmup}
    extra_torch = {"mode": "eager", "warmup": args.warmup}
    torch_medians: Dict[str, float] = {}
    tmodels = None
    if ctx.torch:
        t0 = time.perf_counter()
        log(f"{group.key} {dtype}: building torch/diffusers models")
        try:
            tmodels = group.torch_models(ctx, dtype)
            build_error = None
        except Exception as exc:
            build_error = short_error(exc)
            log(f"  torch build failed: {build_error}")
        log(f"  built in {time.perf_counter() - t0:.1f} s; RSS {(current_rss() or 0) / GB:.2f} GB")
        for row in _timed_rows(workloads, "torch", "", dtype, build_error, extra_torch, args,
                               lambda wl, models=tmodels: wl.torch_run(models, dtype)):
            if row.median is not None:
                torch_medians[row.workload] = row.median
            emit(row)
    t0 = time.perf_counter()
    log(f"{group.key} {dtype}: building MindSpore models ({group.ms_source})")
    try:
        msmodels = group.ms_models(ctx, dtype, tmodels)
        build_error = None
    except Exception as exc:
        msmodels, build_error = None, short_error(exc)
        log(f"  MindSpore build failed: {build_error}")
    if tmodels is not None:
        tmodels.clear()
    del tmodels
    free_memory()
    log(f"  built in {time.perf_counter() - t0:.1f} s; RSS {(current_rss() or 0) / GB:.2f} GB")
    for row in _timed_rows(workloads, "mindspore", f" ({ctx.mode})", dtype, build_error, extra_ms, args,
                           lambda wl, models=msmodels: wl.ms_run(models, dtype, ctx.mode)):
        if row.median is not None and torch_medians.get(row.workload):
            row.ratio = row.median / torch_medians[row.workload]
        emit(row)
    # MindSpore keeps compiled graphs (and through them the cells' weights) alive until the process ends, which is
    # why the default driver runs every (group, dtype) unit in its own process.
    del msmodels
    free_memory()


def run_in_process(args, emit_json) -> int:
    """Run the selected workloads in this process; every row goes to ``emit_json`` as a dict."""
    reason = "--no-torch" if args.no_torch else torch_available()
    torch_ok = reason is None
    ctx = Ctx(args, torch_ok)
    registry = Registry(ctx)
    workloads = [registry.get(name) for name in args.workloads]

    import mindspore as ms

    if args.ms_threads:
        ms.set_context(runtime_num_threads=args.ms_threads)
    if torch_ok:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        _quiet_diffusers()
    else:
        log(f"torch rows off ({reason}): MindSpore rows only")
    env = environment(torch_ok)
    log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))

    def emit(row: Row) -> None:
        emit_json({**row.as_json(), "env": env})

    units: Dict[str, List[Workload]] = {}
    for wl in workloads:
        units.setdefault(wl.group.key, []).append(wl)
    for dtype in args.dtypes:
        for group_workloads in units.values():
            run_group(ctx, group_workloads[0].group, group_workloads, dtype, args, emit)
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
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.ms_threads:
        cmd += ["--ms-threads", str(args.ms_threads)]
    if args.no_torch:
        cmd.append("--no-torch")
    if args.tmpdir:
        cmd += ["--tmpdir", str(args.tmpdir)]
    return cmd


def run_isolated(args, workloads: List[Workload], emit_json) -> int:
    """One child process per (group, dtype) unit, so that every unit starts with a clean heap and no leftovers."""
    import subprocess

    units: Dict[str, List[str]] = {}
    for wl in workloads:
        units.setdefault(wl.group.key, []).append(wl.name)
    plan = [(dtype, names) for dtype in args.dtypes for names in units.values()]
    impls = ["torch", "mindspore"] if _torch_expected(args) else ["mindspore"]
    failures = 0
    for i, (dtype, names) in enumerate(plan, 1):
        log(f"unit {i}/{len(plan)}: {', '.join(names)} ({dtype}) in a fresh process")
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
        if rc != 0:
            failures += 1
            why = f"benchmark process exited with {rc}" + (" (killed: out of memory?)" if rc in (-9, 137) else "")
            log(why)
            for name in names:
                for impl in impls:
                    if (name, impl) not in seen:
                        emit_json(Row(name, impl, dtype, skipped=why).as_json())
    return 1 if failures else 0


def fmt_s(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


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
    for col in ("workload", "impl", "dtype", "median s", "min s", "max s", "peak RSS GB", "ratio ms/torch"):
        table.add_column(col, justify="left" if col in ("workload", "impl", "dtype") else "right")
    notes = []
    for row in rows:
        if row.get("skipped"):
            notes.append(f"{row['workload']} {row['impl']} {row['dtype']}: {row['skipped']}")
            table.add_row(row["workload"], row["impl"], row["dtype"], f"skipped [{len(notes)}]", "-", "-", "-", "-")
            continue
        peak = "-" if row.get("peak_rss_gb") is None else f"{row['peak_rss_gb']:.2f}"
        ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}"
        table.add_row(row["workload"], row["impl"], row["dtype"], fmt_s(row["median_s"]), fmt_s(row["min_s"]),
                      fmt_s(row["max_s"]), peak, ratio)
    console = Console(width=max(120, Console().width))
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"[{i}] {note}", markup=False, highlight=False)


def describe(workloads: List[Workload]) -> None:
    for wl in workloads:
        flag = "" if wl.default else "  (off by default)"
        print(f"{wl.name}{flag}\n  mindspore: {wl.what_ms}\n  torch:     {wl.what_torch}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="default workloads: " + ", ".join(DEFAULT_WORKLOADS) +
                                        "\npatterns: unet-step-SIZE, movq-encode-SIZE, movq-decode-SIZE, "
                                        "pipeline-tiny-SIZE-STEPS, pipeline-real-SIZE-STEPS")
    ap.add_argument("--workload", action="append", metavar="NAME",
                    help="run only this workload (repeatable); default: every default workload")
    ap.add_argument("--dtype", action="append", choices=DTYPES + ("both",),
                    help="float32, float16 or both (repeatable; default both)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per row (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1; compiles)")
    ap.add_argument("--mode", choices=("graph", "pynative"), default="graph",
                    help="MindSpore execution: compiled graph (default, as the CLI) or pynative")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: torch's own default)")
    ap.add_argument("--ms-threads", type=int,
                    help="MindSpore runtime_num_threads (default: MindSpore's own default)")
    ap.add_argument("--no-torch", action="store_true", help="MindSpore rows only, even if torch is installed")
    ap.add_argument("--json", action="store_true", help="one JSON object per row on stdout instead of a table")
    ap.add_argument("--list", action="store_true", help="describe the selected workloads and exit")
    ap.add_argument("--in-process", action="store_true",
                    help="run every unit in this process (default: one fresh process per model group and dtype, "
                         "since MindSpore never frees a compiled network's weights)")
    ap.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="tiny fixture folder (prior/, inpaint/)")
    ap.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS, help="real-size config folder")
    ap.add_argument("--tmpdir", help="where pipeline-real-* writes its temporary random checkpoint (GBs)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    for name, value in (("--threads", args.threads), ("--ms-threads", args.ms_threads)):
        if value is not None and value < 1:
            ap.error(f"{name} must be at least 1")
    dtypes = args.dtype or ["both"]
    args.dtypes = [d for d in DTYPES if d in dtypes or "both" in dtypes]
    args.workloads = list(dict.fromkeys(args.workload or DEFAULT_WORKLOADS))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for path, what in ((args.fixture / "inpaint", "fixture"), (args.configs / "unet.json", "configs")):
        if not path.exists():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    # names are checked (and described) without importing any framework
    workloads = [Registry(Ctx(args, False)).get(name) for name in args.workloads]
    if args.list:
        describe(workloads)
        return 0

    rows: List[dict] = []

    def emit_json(row: dict) -> None:
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)

    started = time.perf_counter()
    rc = run_in_process(args, emit_json) if args.in_process else run_isolated(args, workloads, emit_json)
    log(f"done in {time.perf_counter() - started:.0f} s")
    if not args.json:
        order = {name: i for i, name in enumerate(args.workloads)}
        rows.sort(key=lambda r: (order.get(r["workload"], len(order)), DTYPES.index(r["dtype"]), r["impl"] != "torch"))
        print_table(rows)
    return rc


if __name__ == "__main__":
    sys.exit(main())
