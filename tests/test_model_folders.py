"""Malformed or unsupported model folders: every problem is a ModelError naming the file (and the key or tensor),
found from config.json before any weights are read, and through the CLI one `error:` line with exit code 2.

Each case copies a fixture component (or the whole pipeline folder) to tmp_path and breaks one file.
"""
from __future__ import annotations

import json
import re
import shutil
import struct

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn
from PIL import Image
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from conftest import FIXTURE
from kandinsky_cli import model_io
from kandinsky_cli.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
from kandinsky_cli.cli import app
from kandinsky_cli.errors import ModelError
from kandinsky_cli.inpaint_pipeline import InpaintPipeline
from kandinsky_cli.mclip import MultilingualCLIP
from kandinsky_cli.movq import VQModel
from kandinsky_cli.prior import PriorTransformer
from kandinsky_cli.prior_pipeline import PriorPipeline
from kandinsky_cli.schedulers import DDIMScheduler, UnCLIPScheduler
from kandinsky_cli.unet import UNet2DConditionModel

NETWORKS = {"prior/text_encoder": CLIPTextModelWithProjection, "prior/image_encoder": CLIPVisionModelWithProjection,
            "prior/prior": PriorTransformer, "inpaint/text_encoder": MultilingualCLIP,
            "inpaint/unet": UNet2DConditionModel, "inpaint/movq": VQModel}
DELETE = object()   # in an edit: remove the key


def copy_component(component: str, tmp_path):
    dst = tmp_path / component
    shutil.copytree(FIXTURE / component, dst)
    return dst


def edit_json(path, changes: dict) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is DELETE:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data), encoding="utf-8")


def weights_file(folder):
    return next(folder.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("component", sorted(NETWORKS))
@pytest.mark.parametrize("text,problem", [("[1, 2]", "must be a JSON object {...}, got a list"),
                                          ("7", "must be a JSON object {...}, got a number"),
                                          ('{"hidden_size": ', "cannot read")])
def test_config_that_is_not_an_object(component, text, problem, tmp_path):
    folder = copy_component(component, tmp_path)
    (folder / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(ModelError) as err:
        NETWORKS[component].from_pretrained(folder)
    assert str(folder / "config.json") in str(err.value) and problem in str(err.value)


CONFIG_CASES = [
    # CLIP text
    ("prior/text_encoder", {"hidden_size": "32"}, r"hidden_size: must be an integer >= 1, got \"32\""),
    ("prior/text_encoder", {"num_attention_heads": 5}, "num_attention_heads: 5 heads do not divide hidden_size 32"),
    ("prior/text_encoder", {"num_hidden_layers": -1}, "num_hidden_layers: must be an integer >= 0, got -1"),
    ("prior/text_encoder", {"hidden_act": "mish"}, r"hidden_act: must be one of .*got \"mish\""),
    ("prior/text_encoder", {"layer_norm_eps": "1e-5"}, "layer_norm_eps: must be a number"),
    ("prior/text_encoder", {"vocab_size": None}, "vocab_size: must be an integer >= 1, got null"),
    # CLIP vision
    ("prior/image_encoder", {"patch_size": 300}, "patch_size: 300 is larger than image_size 224"),
    ("prior/image_encoder", {"image_size": 0}, "image_size: must be an integer >= 1, got 0"),
    # prior
    ("prior/prior", {"num_attention_heads": 0}, "num_attention_heads: must be an integer >= 1, got 0"),
    ("prior/prior", {"num_layers": 1.5}, "num_layers: must be an integer >= 0, got 1.5"),
    ("prior/prior", {"time_embed_act_fn": "mish"}, "time_embed_act_fn: must be one of"),
    ("prior/prior", {"additional_embeddings": 3}, r"additional_embeddings: must be 4 \(the only supported value\)"),
    ("prior/prior", {"norm_in_type": "layer"}, "norm_in_type: must be null"),
    # M-CLIP
    ("inpaint/text_encoder", {"num_attention_heads": 5}, "num_attention_heads: 5 heads do not divide hidden_size"),
    ("inpaint/text_encoder", {"hidden_act": "gelu_fast"}, "hidden_act: must be one of"),
    ("inpaint/text_encoder", {"transformerDimensions": 16}, "transformerDimensions: 16 differs from hidden_size"),
    ("inpaint/text_encoder", {"pad_token_id": 5000}, "pad_token_id: 5000 is outside the vocabulary"),
    ("inpaint/text_encoder", {"position_embedding_type": "relative_key"}, "position_embedding_type: must be one of"),
    # UNet
    ("inpaint/unet", {"down_block_types": ["ResnetDownsampleBlock2D"]}, "has 2 entries for 1 down_block_types"),
    ("inpaint/unet", {"down_block_types": ["ResnetDownsampleBlock2D", "CrossAttnDownBlock2D"]},
     r"down_block_types\[1\]: must be one of .*got \"CrossAttnDownBlock2D\""),
    ("inpaint/unet", {"mid_block_type": "UNetMidBlock2DCrossAttn"}, "mid_block_type: must be one of"),
    ("inpaint/unet", {"attention_head_dim": 128}, "attention_head_dim: 128 is wider than an attention block's 64"),
    ("inpaint/unet", {"norm_num_groups": 24}, r"norm_num_groups: 24 does not divide block_out_channels\[0\] = 32"),
    ("inpaint/unet", {"norm_num_groups": None}, "norm_num_groups: must be an integer >= 1, got null"),
    ("inpaint/unet", {"block_out_channels": [32, -64]}, r"block_out_channels\[1\]: must be an integer >= 1, got -64"),
    ("inpaint/unet", {"layers_per_block": [1, 1, 1]}, r"layers_per_block: must have one entry per block \(2\)"),
    ("inpaint/unet", {"in_channels": "9"}, r"in_channels: must be an integer >= 1, got \"9\""),
    ("inpaint/unet", {"flip_sin_to_cos": "true"}, "flip_sin_to_cos: must be true or false"),
    ("inpaint/unet", {"act_fn": "gelu"}, "act_fn: must be one of"),
    ("inpaint/unet", {"encoder_hid_dim": None}, "encoder_hid_dim: is needed by encoder_hid_dim_type 'text_image_proj'"),
    ("inpaint/unet", {"cross_attention_dim": [32, 32]}, "cross_attention_dim: must be a single integer"),
    ("inpaint/unet", {"class_embed_type": "timestep"}, r"class_embed_type: must be null \(the only supported"),
    ("inpaint/unet", {"resnet_out_scale_factor": 0}, "resnet_out_scale_factor: must not be 0"),
    # MoVQ
    ("inpaint/movq", {"up_block_types": ["UpDecoderBlock2D"]},
     "up_block_types: has 1 entries for 2 block_out_channels"),
    ("inpaint/movq", {"up_block_types": ["UpBlock2D", "UpDecoderBlock2D"]}, r"up_block_types\[0\]: must be one of"),
    ("inpaint/movq", {"norm_num_groups": 7}, r"norm_num_groups: 7 does not divide block_out_channels\[0\] = 32"),
    ("inpaint/movq", {"block_out_channels": [16, 64]}, "block_out_channels: norm_type 'spatial' needs multiples of 32"),
    ("inpaint/movq", {"block_out_channels": []}, "block_out_channels: must be a non-empty list, got \\[\\]"),
    ("inpaint/movq", {"act_fn": "relu"}, "act_fn: must be one of"),
    ("inpaint/movq", {"latent_channels": "4"}, "latent_channels: must be an integer"),
    ("inpaint/movq", {"vq_embed_dim": 3}, "vq_embed_dim: norm_type 'spatial' needs vq_embed_dim == latent_channels"),
    ("inpaint/movq", {"lookup_from_codebook": True}, "lookup_from_codebook: must be false"),
]


@pytest.mark.parametrize("component,changes,problem", CONFIG_CASES,
                         ids=[f"{c.split('/')[1]}-{next(iter(ch))}" for c, ch, _ in CONFIG_CASES])
def test_bad_config_values_name_file_and_key_before_any_weights(component, changes, problem, tmp_path):
    folder = copy_component(component, tmp_path)
    edit_json(folder / "config.json", changes)
    weights_file(folder).unlink()   # a config problem must be found without them
    with pytest.raises(ModelError, match=problem) as err:
        NETWORKS[component].from_pretrained(folder)
    assert str(err.value).startswith(f"{folder / 'config.json'}: ")


@pytest.mark.parametrize("component,key", [("prior/text_encoder", "hidden_size"), ("prior/prior", "embedding_dim"),
                                           ("inpaint/movq", "num_vq_embeddings"), ("inpaint/unet", "in_channels")])
def test_a_missing_key_takes_the_default_which_the_weights_then_contradict(component, key, tmp_path):
    folder = copy_component(component, tmp_path)
    edit_json(folder / "config.json", {key: DELETE})
    problem = f"{re.escape(str(folder))}: (tensor .* but config.json gives|checkpoint lacks)"
    with pytest.raises(ModelError, match=problem):
        NETWORKS[component].from_pretrained(folder)


def test_config_errors_is_the_last_resort_for_unforeseen_values(tmp_path):
    folder = copy_component("prior/prior", tmp_path)
    source = re.escape(str(folder / "config.json"))
    with pytest.raises(ModelError, match=f"^{source}: cannot build the network from this config: .*'NoneType'"):
        model_io.build_from_config(lambda config: config.get("clip_embed_dim") + 1, folder)
    with pytest.raises(ModelError, match=f"^{source}: no_such_key: is missing$"):  # a ModelError passes as it is
        model_io.build_from_config(lambda config: config["no_such_key"], folder)


def test_config_getters():
    cfg = model_io.Config({"n": 3, "flag": False, "types": ["a", "b"], "per": [1, 2], "x": None}, "c.json")
    assert cfg.int("n", min=1) == 3 and cfg.int("absent", 5) == 5 and cfg.int("x", None) is None
    assert cfg.float("n") == 3.0 and isinstance(cfg.float("n"), float) and cfg.bool("flag") is False
    assert cfg.list("types", options=("a", "b")) == ["a", "b"] and cfg.per_block("n", 2, of=int) == [3, 3]
    assert cfg.per_block("per", 2, of=int) == [1, 2] and cfg.choice("x", (None, "y")) is None
    for call, message in [(lambda: cfg.int("n", min=4), "c.json: n: must be an integer >= 4, got 3"),
                          (lambda: cfg.int("flag"), "c.json: flag: must be an integer, got false"),
                          (lambda: cfg.int("absent"), "c.json: absent: is missing"),
                          (lambda: cfg["absent"], "c.json: absent: is missing"),
                          (lambda: cfg.int("x", 2), "c.json: x: must be an integer, got null"),
                          (lambda: cfg.list("types", of=int), r"c.json: types\[0\]: must be an integer, got \"a\""),
                          (lambda: cfg.per_block("per", 3, of=int), r"c.json: per: must have one entry per block"),
                          (lambda: cfg.choice("n", (3.0,)), r"c.json: n: must be 3.0 \(the only supported value\)"),
                          (lambda: cfg.float("types"), "c.json: types: must be a number")]:
        with pytest.raises(ModelError, match=message):
            call()


# ---------------------------------------------------------------------------------------------- weights

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8, np.uint8, np.bool_])
def test_integer_or_bool_data_for_a_float_parameter_is_refused(dtype, tmp_path):
    folder = copy_component("prior/prior", tmp_path)
    path = weights_file(folder)
    state = load_file(str(path))
    state["proj_in.weight"] = state["proj_in.weight"].astype(dtype)
    save_file(state, str(path))
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: tensor proj_in\.weight is stored as [A-Z0-9]+, "
                                         r"but parameter proj_in\.weight needs F64 / F32 / F16 / BF16 data"):
        PriorTransformer.from_pretrained(folder)


def _bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """The upper halves of float32 values: their bfloat16 bit patterns (truncated)."""
    return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def write_raw_safetensors(path, tensors: dict) -> None:
    """A safetensors file written by hand from {key: (dtype name, shape, raw bytes)} (numpy has no bfloat16)."""
    header, offset = {}, 0
    for key, (dtype, shape, data) in tensors.items():
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(data for _, _, data in tensors.values()))


def test_float_dtypes_load_cast_to_the_compute_dtype(tmp_path):
    folder = copy_component("prior/prior", tmp_path)
    path = weights_file(folder)
    state = load_file(str(path))
    assert {v.dtype for v in state.values()} == {np.dtype(np.float32)}
    tensors = {k: ("F32", v.shape, v.tobytes()) for k, v in state.items()}
    weight, bias, std = state["proj_in.weight"], state["proj_in.bias"], state["clip_std"]
    tensors["proj_in.weight"] = ("BF16", weight.shape, _bfloat16_bits(weight).tobytes())
    tensors["proj_in.bias"] = ("F64", bias.shape, bias.astype(np.float64).tobytes())
    tensors["clip_std"] = ("F16", std.shape, std.astype(np.float16).tobytes())
    write_raw_safetensors(path, tensors)
    params = dict(PriorTransformer.from_pretrained(folder).parameters_and_names())
    truncated = (weight.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    assert not np.array_equal(truncated, weight)   # bfloat16 really lost bits
    np.testing.assert_array_equal(params["proj_in.weight"].asnumpy(), truncated)
    np.testing.assert_array_equal(params["proj_in.bias"].asnumpy(), bias)
    np.testing.assert_array_equal(params["clip_std"].asnumpy(), std.astype(np.float16).astype(np.float32))
    assert {p.dtype for p in params.values()} == {ms.float32}


class _Counter(nn.Cell):
    """A cell with one integer parameter and one float parameter."""

    def __init__(self):
        super().__init__()
        self.steps = Parameter(Tensor(np.zeros(3, np.int32)), name="steps")
        self.scale = Parameter(Tensor(np.zeros(2, np.float32)), name="scale")


@pytest.mark.parametrize("stored,ok", [(np.int64, True), (np.uint8, True), (np.float32, False)])
def test_an_integer_parameter_needs_integer_data(stored, ok, tmp_path):
    save_file({"steps": np.array([1, 2, 3], stored), "scale": np.ones(2, np.float32)},
              str(tmp_path / "model.safetensors"))
    cell = _Counter()
    if ok:
        model_io.load_weights(cell, tmp_path, "model")
        assert cell.steps.dtype == ms.int32 and cell.steps.asnumpy().tolist() == [1, 2, 3]
    else:
        with pytest.raises(ModelError, match="tensor steps is stored as F32, but parameter steps needs I64 / "):
            model_io.load_weights(cell, tmp_path, "model")


def test_shard_index_problems(tmp_path):
    folder = copy_component("prior/prior", tmp_path)
    weights_file(folder).unlink()
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    for content, problem in [([], "must be a JSON object"), ({"weight_map": []}, "weight_map: must be a non-empty"),
                             ({"weight_map": {"a": "../x.safetensors"}}, "weight_map: must name files in this folder"),
                             ({"weight_map": {"a": "part-1.safetensors"}}, "names shard.* missing: part-1")]:
        index.write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(ModelError, match=problem):
            PriorTransformer.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------- schedulers, index

@pytest.mark.parametrize("scheduler,changes,problem", [
    (UnCLIPScheduler, {"num_train_timesteps": "1000"}, r"num_train_timesteps: must be an integer >= 1, got \"1000\""),
    (UnCLIPScheduler, {"clip_sample": "false"}, r"clip_sample: must be true or false, got \"false\""),
    (UnCLIPScheduler, {"clip_sample_range": -1}, "clip_sample_range: must be a number >= 0"),
    (UnCLIPScheduler, {"beta_schedule": "linear"}, "cannot build .* only supports beta_schedule 'squaredcos_cap_v2'"),
    (DDIMScheduler, {"steps_offset": "1"}, "steps_offset: must be an integer >= 0"),
    (DDIMScheduler, {"trained_betas": [0.1, "x"]}, r"trained_betas\[1\]: must be a number"),
    (DDIMScheduler, {"timestep_spacing": 3}, "timestep_spacing: must be a string, got 3"),
    (DDIMScheduler, {"thresholding": True}, "cannot build .* thresholding is not supported"),
])
def test_scheduler_config_problems(scheduler, changes, problem, tmp_path):
    folder = copy_component("prior/scheduler" if scheduler is UnCLIPScheduler else "inpaint/scheduler", tmp_path)
    path = folder / "scheduler_config.json"
    edit_json(path, changes)
    with pytest.raises(ModelError, match=problem) as err:
        model_io.build_scheduler(scheduler, folder)
    assert str(err.value).startswith(f"{path}: ")
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ModelError, match="scheduler_config.json: must be a JSON object"):
        model_io.build_scheduler(scheduler, folder)


@pytest.mark.parametrize("pipeline,index,problem", [
    (PriorPipeline, "[]", "model_index.json: must be a JSON object {...}, got a list"),
    (PriorPipeline, '{"_class_name": "KandinskyInpaintPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}',
     "model_index.json: prior: is missing: the folder has no prior component .*KandinskyInpaintPipeline"),
    (InpaintPipeline, '"inpaint"', "model_index.json: must be a JSON object {...}, got a string"),
    (InpaintPipeline, "{}", "model_index.json: text_encoder: is missing"),
])
def test_model_index_problems(pipeline, index, problem, tmp_path):
    root = tmp_path / "pipe"
    root.mkdir()
    (root / "model_index.json").write_text(index, encoding="utf-8")
    with pytest.raises(ModelError, match=problem):
        pipeline(root)


# ---------------------------------------------------------------------------------------------- the CLI

runner = CliRunner()


def break_file(root, what: str) -> str:
    """Break one file of the pipeline folder ``root`` (a copy) as ``what`` says; return the broken file's path."""
    component, kind = what.split(":")
    folder = root / component
    if kind == "list":
        (folder / "config.json").write_text("[]", encoding="utf-8")
        return str(folder / "config.json")
    if kind == "tokenizer":
        (folder / "tokenizer.json").write_text('{"model": ', encoding="utf-8")
        return str(folder / "tokenizer.json")
    if kind == "scheduler":
        edit_json(folder / "scheduler_config.json", {"num_train_timesteps": "1000"})
        return str(folder / "scheduler_config.json")
    if kind == "int-weights":
        path = weights_file(folder)
        state = load_file(str(path))
        key = sorted(state)[0]
        state[key] = state[key].astype(np.int32)
        save_file(state, str(path))
        return str(path)
    changes = {"heads": {"num_attention_heads": 5}, "string": {"image_size": "224"},
               "missing": {"num_vq_embeddings": DELETE}, "string-unet": {"in_channels": "9"}}[kind]
    edit_json(folder / "config.json", changes)
    return str(folder if kind == "missing" else folder / "config.json")


def assert_one_error_line(result, names: str):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    text = result.stdout + result.stderr
    assert "Traceback" not in text and not isinstance(result.exception, (ModelError, TypeError, ValueError))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr


@pytest.fixture
def pipelines(tmp_path):
    """A copy of both fixture pipeline folders, 64x64 inputs and random 32-wide embeddings."""
    shutil.copytree(FIXTURE / "prior", tmp_path / "prior")
    shutil.copytree(FIXTURE / "inpaint", tmp_path / "inpaint")
    Image.new("RGB", (64, 64), (90, 120, 30)).save(tmp_path / "image.png")
    rng = np.random.default_rng(0)
    for name in ("emb", "neg"):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((1, 32)).astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("what", ["text_encoder:list", "text_encoder:heads", "image_encoder:string",
                                  "prior:int-weights", "tokenizer:tokenizer", "scheduler:scheduler"])
def test_prior_command(pipelines, what):
    broken = break_file(pipelines / "prior", what)
    result = runner.invoke(app, ["prior", "x", "--prior-model", str(pipelines / "prior"), "--steps", "2",
                                 "--out-dir", str(pipelines / "out")])
    assert_one_error_line(result, broken)
    assert not (pipelines / "out").exists()


@pytest.mark.parametrize("what", ["unet:list", "movq:missing", "unet:string-unet", "unet:int-weights",
                                  "text_encoder:heads", "tokenizer:tokenizer", "scheduler:scheduler"])
def test_inpaint_command(pipelines, what):
    broken = break_file(pipelines / "inpaint", what)
    d = pipelines
    result = runner.invoke(app, ["inpaint", str(d / "image.png"), "--mask-rect", "0:30,0:30", "--prompt", "x",
                                 "--image-embeds", str(d / "emb.npy"), "--negative-image-embeds", str(d / "neg.npy"),
                                 "--decoder-model", str(d / "inpaint"), "--height", "64", "--width", "64",
                                 "--steps", "2", "--out", str(d / "out.png")])
    assert_one_error_line(result, broken)
    assert not (d / "out.png").exists()


@pytest.mark.parametrize("what,job", [
    ("inpaint/unet:list", "image_embeds: emb.npy, negative_image_embeds: neg.npy"),
    ("inpaint/text_encoder:heads", "image_embeds: emb.npy, negative_image_embeds: neg.npy"),
    ("prior/prior:int-weights", "seed: 1"),
])
def test_batch_command(pipelines, what, job):
    stage, broken_part = what.split("/", 1)
    broken = break_file(pipelines / stage, broken_part)
    (pipelines / "jobs.yaml").write_text(
        "defaults: {steps: 2, prior_steps: 2, height: 64, width: 64}\n"
        f"jobs:\n  - {{image: image.png, mask_rects: ['0:30,0:30'], prompt: x, out: o.png, {job}}}\n", encoding="utf-8")
    result = runner.invoke(app, ["batch", str(pipelines / "jobs.yaml"), "--out-dir", str(pipelines / "out"),
                                 "--prior-model", str(pipelines / "prior"),
                                 "--decoder-model", str(pipelines / "inpaint")])
    assert_one_error_line(result, broken)
    assert not list((pipelines / "out").glob("*.png"))


def test_float16_reads_the_fp16_variant_where_a_component_has_it(tmp_path):
    import mindspore as ms
    from safetensors.numpy import load_file, save_file

    from kandinsky_cli.movq import VQModel

    folder = tmp_path / "movq"
    shutil.copytree(FIXTURE / "inpaint" / "movq", folder)
    plain = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    halved = {k: (v * 0.5).astype(np.float16) for k, v in plain.items()}
    save_file(halved, str(folder / "diffusion_pytorch_model.fp16.safetensors"))
    key = next(k for k, v in plain.items() if v.ndim == 4)
    name = key
    fp16 = dict(VQModel.from_pretrained(folder, ms.float16).parameters_and_names())
    fp32 = dict(VQModel.from_pretrained(folder, ms.float32).parameters_and_names())
    np.testing.assert_array_equal(fp16[name].asnumpy(), halved[key])
    np.testing.assert_array_equal(fp32[name].asnumpy(), plain[key])


@pytest.mark.parametrize("part,file,change,fragment", [
    ("inpaint", "unet/config.json", {"cross_attention_dim": "abc"}, "cross_attention_dim"),
    ("inpaint", "unet/config.json", {"block_out_channels": "abc"}, "block_out_channels"),
    ("inpaint", "scheduler/scheduler_config.json", {"thresholding": True}, "scheduler_config.json"),
])
def test_engine_checks_before_loading_name_the_file(tmp_path, part, file, change, fragment):
    from kandinsky_cli.core import InpaintRequest, Kandinsky
    from kandinsky_cli.errors import UserError

    for name in ("prior", "inpaint"):
        shutil.copytree(FIXTURE / name, tmp_path / name)
    path = tmp_path / part / file
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    engine = Kandinsky(prior_model=str(tmp_path / "prior"), decoder_model=str(tmp_path / "inpaint"))
    request = InpaintRequest({"image": tmp_path / "in.png", "prompt": "x", "mask_rects": ("0:9,0:9",),
                              "out": tmp_path / "o.png", "height": 64, "width": 64})
    with pytest.raises(UserError, match=re.escape(fragment)):
        engine.check_embedding_widths()
        engine.prepare(request)


def test_compiled_networks_are_loaded_once_per_process_and_weights(tmp_path):
    """Graph-mode pipelines on the same weights share their networks and compiled functions (a second engine in one
    process loads and compiles nothing again); other weights (a copy whose file changed), another dtype or eager
    networks are built afresh, and the process holds one decoder entry: the last one built."""
    import os

    first, second = InpaintPipeline(FIXTURE / "inpaint"), InpaintPipeline(FIXTURE / "inpaint")
    assert second.unet is first.unet and second._unet_fn is first._unet_fn and second.movq is first.movq
    assert InpaintPipeline(FIXTURE / "inpaint", mode="pynative").unet is not first.unet
    assert InpaintPipeline(FIXTURE / "inpaint", ms.float16).unet is not first.unet
    copy = tmp_path / "inpaint"
    shutil.copytree(FIXTURE / "inpaint", copy)
    assert InpaintPipeline(copy).unet is not InpaintPipeline(FIXTURE / "inpaint").unet
    same = InpaintPipeline(copy)
    weights = next((copy / "unet").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10 ** 9))
    assert InpaintPipeline(copy).unet is not same.unet          # the file changed: loaded again
    prior = PriorPipeline(FIXTURE / "prior")
    again = PriorPipeline(FIXTURE / "prior")
    assert again.prior is prior.prior and again._prefix_fn is prior._prefix_fn and again._step_fn is prior._step_fn
    assert PriorPipeline(FIXTURE / "prior", mode="pynative").prior is not prior.prior
