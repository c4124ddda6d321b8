"""The in-process workloads of scripts/bench.py: shared inputs, model builders and the functions that make the
timed call of each workload, for MindSpore and for diffusers/transformers.

Every workload function has the signature ``(ctx, models, dtype, p) -> run``: ``models`` is what its group
built (a dict), ``p`` holds the parameters read from the workload's name (``p.size``, ``p.steps``, ...) and
``run`` is the zero-argument callable that is timed (inputs are prepared outside it).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from bench_common import GB, SEED, Ctx, Group, Row, current_rss, free_memory, log, measure, short_error
from random_weights import copy_support_files, random_weights, write_component

CFG_BATCH = 2          # prompt + negative, as every guided step runs
TEXT_LEN = 77          # both tokenizers pad to 77
PROMPT_TOKENS = 12     # random "prompt" tokens before the end token; the rest is padding
STEP_T = 500           # timestep used for single-step rows (cost does not depend on it)
PROMPT = "a red hat, 4k photo"


# --------------------------------------------------------------------------------------------------------------
# groups: the models several workloads share
# --------------------------------------------------------------------------------------------------------------
class ModelGroup(Group):
    """Workloads timed in this process on models built once per dtype: torch rows first, then MindSpore rows.

    ``torch_models(ctx, dtype)`` -> dict of torch objects (already cast); ``ms_models(ctx, dtype, torch_models)``
    -> dict of MindSpore objects (weights copied from the torch models, or random when they are None). Only one
    big model is alive at a time: torch rows, copy, free the torch model, MindSpore rows, free.
    """

    def __init__(self, key: str, torch_models: Callable, ms_models: Callable,
                 ms_source: str = "weights copied from the torch models, or random without torch"):
        super().__init__(key)
        self.torch_models, self.ms_models, self.ms_source = torch_models, ms_models, ms_source

    def run(self, ctx, workloads, dtype, args, emit) -> None:
        extra_ms = {"mode": ctx.mode, "warmup": args.warmup}
        extra_torch = {"mode": "eager", "warmup": args.warmup}
        torch_medians: Dict[str, float] = {}
        tmodels = None
        if ctx.torch:
            t0 = time.perf_counter()
            tmodels, build_error = self._build(dtype, "torch/diffusers models", lambda: self.torch_models(ctx, dtype))
            _log_built(t0)
            for row in _timed_rows(workloads, "torch", "", dtype, build_error, extra_torch, args,
                                   lambda wl, models=tmodels: wl.torch(ctx, models, dtype, wl.p)):
                if row.median is not None:
                    torch_medians[row.workload] = row.median
                emit(row)
        t0 = time.perf_counter()
        msmodels, build_error = self._build(dtype, f"MindSpore models ({self.ms_source})",
                                            lambda: self.ms_models(ctx, dtype, tmodels))
        _drop(tmodels)
        tmodels = None
        _log_built(t0)
        for row in _timed_rows(workloads, "mindspore", f" ({ctx.mode})", dtype, build_error, extra_ms, args,
                               lambda wl, models=msmodels: wl.ms(ctx, models, dtype, wl.p)):
            if row.median is not None and torch_medians.get(row.workload):
                row.ratio = row.median / torch_medians[row.workload]
            emit(row)
        # MindSpore keeps compiled graphs (and through them the cells' weights) alive until the process ends,
        # which is why the default driver runs every (group, dtype) unit in its own process.
        del msmodels
        free_memory()

    def _build(self, dtype: str, what: str, build: Callable[[], dict]):
        """(models, None), or (None, why the build failed)."""
        log(f"{self.key} {dtype}: building {what}")
        try:
            return build(), None
        except Exception as exc:
            error = short_error(exc)
            log(f"  build failed: {error}")
            return None, error


def _log_built(t0: float) -> None:
    log(f"  built in {time.perf_counter() - t0:.1f} s; RSS {(current_rss() or 0) / GB:.2f} GB")


def _drop(models: Optional[dict]) -> None:
    """Free the torch models once MindSpore has its copy of their weights."""
    if models is not None:
        models.clear()
    free_memory()


def _timed_rows(workloads, impl: str, how: str, dtype: str, build_error: Optional[str], extra: dict, args,
                make_run: Callable):
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


# --------------------------------------------------------------------------------------------------------------
# shared inputs (numpy, identical for both frameworks)
# --------------------------------------------------------------------------------------------------------------
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


def _prior_inputs(embedding_dim: int, num_embeddings: int):
    rng = np.random.default_rng(SEED)
    x = randn(rng, (CFG_BATCH, embedding_dim))
    proj = randn(rng, (CFG_BATCH, embedding_dim))
    hidden = randn(rng, (CFG_BATCH, num_embeddings, embedding_dim))
    mask = np.zeros((CFG_BATCH, num_embeddings), bool)
    mask[:, :2 + PROMPT_TOKENS] = True
    return x, proj, hidden, mask


def _unet_inputs(cfg: dict, latent: int):
    rng = np.random.default_rng(SEED)
    sample = randn(rng, (CFG_BATCH, cfg["in_channels"], latent, latent))
    hidden = randn(rng, (CFG_BATCH, TEXT_LEN, cfg["encoder_hid_dim"]))
    text = randn(rng, (CFG_BATCH, cfg["cross_attention_dim"]))
    image = randn(rng, (CFG_BATCH, cfg["cross_attention_dim"]))
    return sample, hidden, text, image


def _movq_image(size: int) -> np.ndarray:
    return np.clip(randn(np.random.default_rng(SEED), (1, 3, size, size)), -1, 1)


def _movq_latents(channels: int, lat: int) -> np.ndarray:
    return randn(np.random.default_rng(SEED), (1, channels, lat, lat))


def movq_factor(cfg: dict) -> int:
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def _ms_tensor(arr, dtype=None):
    import mindspore as ms

    return ms.Tensor(arr if dtype is None else np.asarray(arr, dtype=np_dtype(dtype)))


def _torch_tensor(arr, dtype=None):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if dtype is None else t.to(torch_dtype(dtype))


def ms_dtype(dtype: str):
    import mindspore as ms

    return ms.float16 if dtype == "float16" else ms.float32


def torch_dtype(dtype: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype, torch.float32)


def ms_precision(cell, dtype: str):
    """A loaded float32 MindSpore network switched to the bf16 operators for dtype "bfloat16" (what the tool's
    --dtype bfloat16 does); as is otherwise."""
    from kandinsky_cli.layers import with_precision

    return with_precision(cell, dtype == "bfloat16")


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


def component_group(key: str, torch_build, ms_build) -> ModelGroup:
    """One real-size network, under ``models[key]``: torch's random init, copied into MindSpore (random without
    torch)."""
    def torch_models(ctx, dtype):
        return {key: torch_build(ctx).to(torch_dtype(dtype))}

    def ms_models(ctx, dtype, tmodels):
        cell = ms_build(ctx)
        if tmodels is not None:
            copy_torch_weights(cell, tmodels[key], dtype)
        else:
            fill_random(cell, dtype)
        return {key: ms_precision(cell, dtype)}

    return ModelGroup(key, torch_models, ms_models)


def nothing_group() -> ModelGroup:
    return ModelGroup("none", lambda ctx, dtype: {}, lambda ctx, dtype, tmodels: {}, "nothing to build")


# --------------------------------------------------------------------------------------------------------------
# component workloads
# --------------------------------------------------------------------------------------------------------------
def clip_text_torch(ctx, models, dtype, p):
    import torch

    model = models["clip"]
    ids = _torch_tensor(clip_ids(model.config.vocab_size))

    def run():
        with torch.no_grad():
            out = model(input_ids=ids)
        return out.text_embeds, out.last_hidden_state
    return run


def clip_text_ms(ctx, models, dtype, p):
    from kandinsky_cli.layers import compiled

    cell = models["clip"]
    fn = compiled(cell, ctx.mode)
    ids = _ms_tensor(clip_ids(cell.config["vocab_size"]).astype(np.int32))

    def run():
        embeds, hidden = fn(ids)
        return embeds.asnumpy(), hidden.asnumpy()
    return run


def mclip_torch(ctx, models, dtype, p):
    import torch

    model = models["mclip"]
    ids, mask = (_torch_tensor(a) for a in xlmr_ids(model.config.vocab_size))

    def run():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask)
    return run


def mclip_ms(ctx, models, dtype, p):
    from kandinsky_cli.layers import compiled

    cell = models["mclip"]
    fn = compiled(cell, ctx.mode)
    ids, mask = (_ms_tensor(a.astype(np.int32)) for a in xlmr_ids(cell.config.vocab_size))

    def run():
        embeds, hidden = fn(ids, mask)
        return embeds.asnumpy(), hidden.asnumpy()
    return run


def prior_torch(ctx, models, dtype, p):
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


def prior_ms(ctx, models, dtype, p):
    from kandinsky_cli.layers import compiled

    cell = models["prior"]
    fn = compiled(cell, ctx.mode)
    x, proj, hidden, mask = _prior_inputs(cell.embedding_dim, cell.config["num_embeddings"])
    # as PriorPipeline: every input (the boolean text mask too) goes in as a tensor of the run dtype
    x, proj, hidden, mask = (_ms_tensor(a, dtype) for a in (x, proj, hidden, mask))

    def run():
        return fn(x, cell.timestep_input(STEP_T, CFG_BATCH), proj, hidden, mask).asnumpy()
    return run


def prior_cached_step_ms(ctx, models, dtype, p):
    from kandinsky_cli.layers import compiled

    cell = models["prior"]
    prefix, step = compiled(cell.prefix, ctx.mode), compiled(cell.step, ctx.mode)
    x, proj, hidden, mask = _prior_inputs(cell.embedding_dim, cell.config["num_embeddings"])
    x, proj, hidden, mask = (_ms_tensor(a, dtype) for a in (x, proj, hidden, mask))
    keys, values, step_mask = prefix(proj, hidden, mask)    # once per prompt in PriorPipeline, not timed

    def run():
        return step(x, cell.timestep_input(STEP_T, CFG_BATCH), keys, values, step_mask).asnumpy()
    return run


def unet_torch(ctx, models, dtype, p):
    import torch

    model = models["unet"]
    sample, hidden, text, image = (_torch_tensor(a, dtype) for a in _unet_inputs(model.config, p.lat))
    t = torch.tensor(STEP_T)

    def run():
        with torch.no_grad():
            return model(sample, t, encoder_hidden_states=hidden,
                         added_cond_kwargs={"text_embeds": text, "image_embeds": image}, return_dict=False)[0]
    return run


def unet_ms(ctx, models, dtype, p):
    from kandinsky_cli.layers import compiled

    cell = models["unet"]
    fn = compiled(cell, ctx.mode)
    sample, hidden, text, image = (_ms_tensor(a, dtype) for a in _unet_inputs(ctx.config("unet.json"), p.lat))

    def run():  # as InpaintPipeline's denoising loop: host timestep embedding, compiled UNet, to numpy
        return fn(sample, cell.time_proj(np.full(CFG_BATCH, STEP_T)), hidden, text, image).asnumpy()
    return run


def movq_encode_torch(ctx, models, dtype, p):
    import torch

    model = models["movq"]
    x = _torch_tensor(_movq_image(p.size), dtype)

    def run():
        with torch.no_grad():
            return model.encode(x).latents
    return run


def movq_encode_ms(ctx, models, dtype, p):
    from kandinsky_cli.layers import compiled

    fn = compiled(models["movq"].encode_latents, ctx.mode)
    x = _ms_tensor(_movq_image(p.size), dtype)
    return lambda: fn(x).asnumpy()


def movq_decode_torch(ctx, models, dtype, p):
    import torch

    model = models["movq"]
    z = _torch_tensor(_movq_latents(model.config.latent_channels, p.lat), dtype)

    def run():
        with torch.no_grad():
            return model.decode(z, force_not_quantize=True).sample
    return run


def movq_decode_ms(ctx, models, dtype, p):
    from kandinsky_cli.layers import compiled

    cell = models["movq"]
    fn = compiled(cell.decode_latents, ctx.mode)
    z = _ms_tensor(_movq_latents(cell.config["latent_channels"], p.lat), dtype)
    return lambda: fn(z).asnumpy()


# --------------------------------------------------------------------------------------------------------------
# pipelines: loading the tiny fixture, one decoder call (tiny fixture or real size)
# --------------------------------------------------------------------------------------------------------------
def quiet_diffusers():
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

    quiet_diffusers()
    inpaint = KandinskyInpaintPipeline.from_pretrained(fixture / "inpaint", torch_dtype=torch_dtype(dtype))
    inpaint.set_progress_bar_config(disable=True)
    if not prior:
        return inpaint
    return inpaint, KandinskyPriorPipeline.from_pretrained(fixture / "prior", torch_dtype=torch_dtype(dtype))


def load_tiny_torch(ctx, models, dtype, p):
    return lambda: _torch_pipelines(ctx.fixture, dtype)


def matmul_ms(ctx, models, dtype, p):
    """The matmul ceiling: compiled float32 ops.matmul, or the bf16 operator on bf16 operands (bfloat16)."""
    import mindspore as ms
    from mindspore import ops

    rng = np.random.default_rng(SEED)
    a, b = (randn(rng, (p.size, p.size)) for _ in range(2))
    if dtype == "bfloat16":
        from kandinsky_cli import bf16

        kernel = bf16.ops().mm_nn
        a, b = (ms.Tensor(bf16.to_bits(x)[None]) for x in (a, b))
    else:
        kernel = ops.matmul
        a, b = (ms.Tensor(x.astype(np_dtype(dtype))) for x in (a, b))

    @ms.jit
    def product(x, y):
        return kernel(x, y)
    return lambda: product(a, b).asnumpy()


def matmul_torch(ctx, models, dtype, p):
    import torch

    rng = np.random.default_rng(SEED)
    a, b = (_torch_tensor(randn(rng, (p.size, p.size)), dtype) for _ in range(2))

    def run():
        with torch.no_grad():
            return torch.matmul(a, b).float().numpy()
    return run


def matmul_params(ctx: Ctx, name: str, size: int) -> dict:
    if size <= 0:
        raise SystemExit(f"error: workload {name}: the size must be positive")
    return {"size": size, "gflop": 2 * size ** 3 / 1e9}


def load_tiny_ms(ctx, models, dtype, p):
    from kandinsky_cli.inpaint_pipeline import InpaintPipeline
    from kandinsky_cli.prior_pipeline import PriorPipeline

    return lambda: (InpaintPipeline(ctx.fixture / "inpaint", ms_dtype(dtype), ctx.mode, bf16=dtype == "bfloat16"),
                    PriorPipeline(ctx.fixture / "prior", ms_dtype(dtype), ctx.mode, bf16=dtype == "bfloat16"))


def pipeline_torch(ctx, models, dtype, p):
    import torch

    pipe = models["pipe"]
    image, mask, emb, neg = inpaint_inputs(p.size, pipe.unet.config.cross_attention_dim)
    emb, neg = _torch_tensor(emb), _torch_tensor(neg)

    def run():
        with torch.no_grad():
            return pipe(PROMPT, image, mask, emb, neg, height=p.size, width=p.size, num_inference_steps=p.steps,
                        guidance_scale=4.0, generator=torch.Generator().manual_seed(SEED), output_type="np").images
    return run


def pipeline_ms(ctx, models, dtype, p):
    from kandinsky_cli.noise import Noise

    pipe = models["pipe"]
    image, mask, emb, neg = inpaint_inputs(p.size, pipe.image_embed_dim)
    # models loaded, as the torch row: keep the text encoder, but encode the texts again on every call
    pipe.keep_text_encoder = True

    def run():
        pipe.clear_text_cache()
        return pipe(PROMPT, image, mask, emb, neg, height=p.size, width=p.size, num_inference_steps=p.steps,
                    guidance_scale=4.0, noise=Noise(SEED))
    return run


def tiny_pipeline_group() -> ModelGroup:
    def torch_models(ctx, dtype):
        return {"pipe": _torch_pipelines(ctx.fixture, dtype, prior=False)}

    def ms_models(ctx, dtype, tmodels):
        from kandinsky_cli.inpaint_pipeline import InpaintPipeline

        return {"pipe": InpaintPipeline(ctx.fixture / "inpaint", ms_dtype(dtype), ctx.mode, bf16=dtype == "bfloat16")}

    return ModelGroup("tiny-pipeline", torch_models, ms_models, "from the fixture")


# real-size decoder components: (subfolder, config file, weights file name, torch builder, MindSpore builder)
REAL_DECODER = (("text_encoder", "text_encoder_mclip.json", "model", torch_mclip, ms_mclip),
                ("unet", "unet.json", "diffusion_pytorch_model", torch_unet, ms_unet),
                ("movq", "movq.json", "diffusion_pytorch_model", torch_movq, ms_movq))


def real_pipeline_group() -> ModelGroup:
    """The real-size decoder pipeline: built in torch, written to a temporary pipeline folder (random weights
    without torch) and loaded from there by MindSpore, as the tool loads a checkpoint."""
    def torch_models(ctx, dtype):
        from diffusers import DDIMScheduler, KandinskyInpaintPipeline
        from transformers import AutoTokenizer

        quiet_diffusers()
        parts = {}
        for name, _, _, build, _ in REAL_DECODER:
            log(f"  building torch {name} ({dtype})")
            parts[name] = build(ctx).to(torch_dtype(dtype))
        pipe = KandinskyInpaintPipeline(
            text_encoder=parts["text_encoder"], unet=parts["unet"], movq=parts["movq"],
            # the fixture's tokenizer (1002 pieces) stands in for XLM-R's: the text length is padded to 77 anyway
            tokenizer=AutoTokenizer.from_pretrained(ctx.fixture / "inpaint" / "tokenizer"),
            scheduler=DDIMScheduler.from_pretrained(ctx.fixture / "inpaint" / "scheduler"))
        pipe.set_progress_bar_config(disable=True)
        return {"pipe": pipe}

    def component_state(ctx, tmodels, name: str, ms_build, dtype: str) -> Dict[str, np.ndarray]:
        if tmodels is not None:
            module = getattr(tmodels["pipe"], name)
            return {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in module.state_dict().items()}
        rng = np.random.default_rng(SEED)
        return {k: a.astype(np_dtype(dtype)) for k, a in random_weights(ms_build(ctx), rng)}

    def ms_models(ctx, dtype, tmodels):
        import mindspore as ms  # noqa: F401  (before the pipeline import, as the CLI does)
        from kandinsky_cli.inpaint_pipeline import InpaintPipeline

        # the folder lives as long as the models (removed when they are freed): the pipeline loads its text
        # encoder from it on first use
        folder = tempfile.TemporaryDirectory(prefix="kandinsky-bench-", dir=ctx.tmpdir)
        root = Path(folder.name)
        try:
            copy_support_files(ctx.fixture / "inpaint", root)
            for name, config_file, weights, _, ms_build in REAL_DECODER:
                log(f"  writing {name} weights ({dtype}) to {root}")
                state = component_state(ctx, tmodels, name, ms_build, dtype)
                write_component(root / name, ctx.config(config_file), weights, state)
                del state
                free_memory()
            _drop(tmodels)
            log(f"  loading the MindSpore pipeline from {root}")
            return {"pipe": InpaintPipeline(root, ms_dtype(dtype), ctx.mode, bf16=dtype == "bfloat16"), "folder": folder}
        except BaseException:
            folder.cleanup()
            raise

    return ModelGroup("real-pipeline", torch_models, ms_models)


# --------------------------------------------------------------------------------------------------------------
# parameters read from a workload's name
# --------------------------------------------------------------------------------------------------------------
def latent_params(ctx: Ctx, name: str, size: int) -> dict:
    """An image size and its MoVQ latent size (the MoVQ's downsampling factor comes from its config)."""
    factor = movq_factor(ctx.config("movq.json"))
    if size <= 0 or size % (factor * 8):
        raise SystemExit(f"error: workload {name}: the size must be a positive multiple of {factor * 8}")
    return {"size": size, "factor": factor, "lat": size // factor}


def pipeline_params(ctx: Ctx, name: str, size: int, steps: int) -> dict:
    if size <= 0 or size % 64:
        raise SystemExit(f"error: workload {name}: the size must be a positive multiple of 64")
    if steps < 1:
        raise SystemExit(f"error: workload {name}: at least 1 step")
    return {"size": size, "steps": steps}
