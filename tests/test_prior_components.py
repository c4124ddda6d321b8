"""CLIP text/vision towers and the PriorTransformer against the tiny fixture's diffusers/transformers goldens."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from mindspore import Tensor

from conftest import assert_scaled, scaled_error
from kandinsky_cli import model_io
from kandinsky_cli.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
from kandinsky_cli.errors import UserError
from kandinsky_cli.prior import PriorTransformer


@pytest.fixture(scope="module")
def prior_dir(fixture_dir):
    return fixture_dir / "prior"


@pytest.fixture(scope="module")
def text_encoder(prior_dir):
    return CLIPTextModelWithProjection.from_pretrained(prior_dir / "text_encoder")


@pytest.fixture(scope="module")
def image_encoder(prior_dir):
    return CLIPVisionModelWithProjection.from_pretrained(prior_dir / "image_encoder")


@pytest.fixture(scope="module")
def prior(prior_dir):
    return PriorTransformer.from_pretrained(prior_dir / "prior")


ERRORS = {}


def check(cand, ref, key):
    cand = cand.asnumpy() if isinstance(cand, Tensor) else np.asarray(cand)
    ERRORS[key] = scaled_error(cand, ref)
    assert_scaled(cand, ref, 1e-4, key)


@pytest.fixture(scope="module", autouse=True)
def report_errors():
    yield
    if ERRORS:
        print("\nmax scaled errors: " + ", ".join(f"{k}={v:.2e}" for k, v in sorted(ERRORS.items())))


# ---------------------------------------------------------------------------------------------- goldens


def test_clip_text(text_encoder, golden):
    g = golden("components")
    text_embeds, last_hidden_state = text_encoder(Tensor(g["clip_text/input_ids"]))
    check(text_embeds, g["clip_text/text_embeds"], "clip_text/text_embeds")
    check(last_hidden_state, g["clip_text/last_hidden_state"], "clip_text/last_hidden_state")


def test_clip_text_eos_id_pooling_matches_legacy(prior_dir, golden):
    """With a real eos_token_id (the tiny vocab's <|endoftext|> is its largest id) pooling picks the same token."""
    config = model_io.read_config(prior_dir / "text_encoder")
    config["eos_token_id"] = config["vocab_size"] - 1
    cell = CLIPTextModelWithProjection(config)
    model_io.load_weights(cell, prior_dir / "text_encoder", model_io.TRANSFORMERS_WEIGHTS)
    cell.set_train(False)
    g = golden("components")
    text_embeds, _ = cell(Tensor(g["clip_text/input_ids"]))
    assert_scaled(text_embeds.asnumpy(), g["clip_text/text_embeds"], 1e-4, "text_embeds (eos id pooling)")


def test_clip_vision(image_encoder, golden):
    g = golden("components")
    check(image_encoder(Tensor(g["clip_vision/pixel_values"])), g["clip_vision/image_embeds"],
          "clip_vision/image_embeds")
    size = image_encoder.config["image_size"]
    zeros = Tensor(np.zeros((1, 3, size, size), np.float32))
    check(image_encoder(zeros), g["clip_vision/zero_image_embeds"], "clip_vision/zero_image_embeds")


def test_prior_predictions(prior, golden):
    g = golden("components")
    inputs = [Tensor(g[f"prior/{k}"]) for k in ("hidden_states", "proj_embedding", "encoder_hidden_states",
                                                "attention_mask")]
    timesteps = [int(t) for t in g["prior/timesteps"]]
    assert timesteps == [999, 500, 0]
    for t in timesteps:
        out = prior.predict(inputs[0], t, inputs[1], inputs[2], inputs[3])
        check(out, g[f"prior/predicted_image_embedding_t{t}"], f"prior/predicted_image_embedding_t{t}")


def test_prior_mask_as_float_and_construct(prior, golden):
    """A 0/1 float mask and the explicit construct(timestep_embedding_input) path give the same result."""
    g = golden("components")
    b = g["prior/hidden_states"].shape[0]
    out = prior(Tensor(g["prior/hidden_states"]), prior.timestep_input(500, b), Tensor(g["prior/proj_embedding"]),
                Tensor(g["prior/encoder_hidden_states"]), Tensor(g["prior/attention_mask"].astype(np.float32)))
    assert_scaled(out.asnumpy(), g["prior/predicted_image_embedding_t500"], 1e-4, "float mask")


def test_prior_post_process(prior, golden):
    g = golden("components")
    check(prior.post_process_latents(Tensor(g["prior/hidden_states"])), g["prior/post_process_latents"],
          "prior/post_process_latents")


# ------------------------------------------------------------------------------------------- strict loading


def _copy_component(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
        (dst / f.name).chmod(0o644)
    return dst


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_loading_is_strict(prior_dir, tmp_path, change):
    from safetensors.numpy import load_file, save_file

    comp = _copy_component(prior_dir / "prior", tmp_path / "prior")
    path = comp / f"{model_io.DIFFUSERS_WEIGHTS}.safetensors"
    state = load_file(str(path))
    if change == "missing":
        key = "transformer_blocks.0.attn1.to_k.bias"
        del state[key]
    elif change == "extra":
        key = "transformer_blocks.0.attn2.to_q.weight"
        state[key] = np.zeros((4, 4), np.float32)
    else:
        key = "proj_in.weight"
        state[key] = np.zeros(state[key].shape[::-1], np.float32)
    save_file(state, str(path))
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        PriorTransformer.from_pretrained(comp)


def test_text_loading_is_strict(prior_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    comp = _copy_component(prior_dir / "text_encoder", tmp_path / "text_encoder")
    path = comp / f"{model_io.TRANSFORMERS_WEIGHTS}.safetensors"
    state = load_file(str(path))
    del state["text_projection.weight"]
    save_file(state, str(path))
    with pytest.raises(UserError, match=r"text_projection\.weight"):
        CLIPTextModelWithProjection.from_pretrained(comp)


def test_iter_tensors_reads_every_dtype_exactly(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    state = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float16),
             "c": np.arange(6, dtype=np.int64).reshape(2, 3), "d": np.zeros((0, 4), np.float32),
             "e": np.array(2.5, np.float32)}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    got = dict(model_io.iter_tensors(path, ["e", "c", "a", "d", "b"]))
    assert set(got) == set(state)
    for key, arr in state.items():
        assert got[key].dtype == arr.dtype and got[key].shape == arr.shape
        np.testing.assert_array_equal(got[key], arr)


def test_unreadable_tensors_are_clear_errors(tmp_path):
    import struct

    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "f8.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(UserError, match="unsupported dtype F8_E4M3"):
        list(model_io.iter_tensors(path, ["w"]))
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(UserError, match="truncated"):
        list(model_io.iter_tensors(path, ["w"]))


def test_config_mismatch_is_reported(prior_dir, tmp_path):
    comp = _copy_component(prior_dir / "image_encoder", tmp_path / "image_encoder")
    config = json.loads((comp / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (comp / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"vision_model\.encoder\.layers\.\d+\."):
        CLIPVisionModelWithProjection.from_pretrained(comp)


# ------------------------------------------------------------------------------------ nothing hard-coded


def _randomize(cell, seed=0):
    rng = np.random.default_rng(seed)
    for _, p in cell.parameters_and_names():
        p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.2))
    cell.set_train(False)
    return cell


def test_text_model_other_config():
    config = dict(hidden_size=48, intermediate_size=20, num_attention_heads=6, num_hidden_layers=2,
                  max_position_embeddings=16, vocab_size=300, hidden_act="gelu", layer_norm_eps=1e-6,
                  projection_dim=24, eos_token_id=7, some_unknown_key=1)
    cell = _randomize(CLIPTextModelWithProjection(config))
    names = dict(cell.parameters_and_names())
    assert names["text_model.embeddings.token_embedding.weight"].shape == (300, 48)
    assert names["text_model.encoder.layers.1.mlp.fc1.weight"].shape == (20, 48)
    assert "text_model.encoder.layers.2.mlp.fc1.weight" not in names
    assert names["text_projection.weight"].shape == (24, 48) and "text_projection.bias" not in names
    rng = np.random.default_rng(1)
    ids = rng.integers(10, 300, size=(2, 16))
    ids[0, 5] = ids[0, 9] = 7  # first eos at 5
    ids[1, 12] = 7
    ids[1, 3] = 299  # the largest id elsewhere: must not be chosen when eos_token_id != 2
    text_embeds, hidden = cell(Tensor(ids))
    assert text_embeds.shape == (2, 24) and hidden.shape == (2, 16, 48)
    w = names["text_projection.weight"].asnumpy()
    h = hidden.asnumpy()
    expected = np.stack([h[0, 5], h[1, 12]]) @ w.T
    np.testing.assert_allclose(text_embeds.asnumpy(), expected, rtol=1e-4, atol=1e-4)
    # causal: the first token's state does not depend on later tokens
    ids2 = ids.copy()
    ids2[:, 8:] = 11
    _, hidden2 = cell(Tensor(ids2))
    np.testing.assert_allclose(hidden2.asnumpy()[:, :8], h[:, :8], rtol=1e-5, atol=1e-5)


def test_vision_model_other_config():
    config = dict(hidden_size=40, intermediate_size=24, num_attention_heads=5, num_hidden_layers=3,
                  image_size=32, patch_size=8, projection_dim=12, num_channels=3)
    cell = _randomize(CLIPVisionModelWithProjection(config))
    names = dict(cell.parameters_and_names())
    assert names["vision_model.embeddings.position_embedding.weight"].shape == (17, 40)
    assert names["vision_model.embeddings.patch_embedding.weight"].shape == (40, 3, 8, 8)
    assert "vision_model.embeddings.patch_embedding.bias" not in names
    out = cell(Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)))
    assert out.shape == (2, 12)


def test_prior_other_config():
    config = dict(num_attention_heads=3, attention_head_dim=8, num_layers=2, embedding_dim=16, num_embeddings=10,
                  time_embed_dim=20, embedding_proj_dim=12, clip_embed_dim=14, unknown_option="x")
    cell = _randomize(PriorTransformer(config))
    names = dict(cell.parameters_and_names())
    assert names["positional_embedding"].shape == (1, 14, 24)
    assert names["time_embedding.linear_1.weight"].shape == (20, 24)
    assert names["embedding_proj.weight"].shape == (24, 12)
    assert names["transformer_blocks.1.ff.net.0.proj.weight"].shape == (96, 24)
    assert names["clip_std"].shape == (1, 14)
    assert cell.embedding_dim == 16 and cell.clip_embed_dim == 14 and cell.inner_dim == 24
    # the fixture prior has one layer, where the causal part of the mask cannot change the prd output
    np.testing.assert_array_equal(cell.causal_attention_mask.asnumpy()[0],
                                  np.triu(np.full((14, 14), -10000.0, np.float32), 1))
    rng = np.random.default_rng(0)
    mask = np.ones((2, 10), bool)
    mask[0, 4:] = False
    out = cell.predict(Tensor(rng.standard_normal((2, 16)).astype(np.float32)), 7,
                       Tensor(rng.standard_normal((2, 12)).astype(np.float32)),
                       Tensor(rng.standard_normal((2, 10, 16)).astype(np.float32)), Tensor(mask))
    assert out.shape == (2, 14)
    assert np.isfinite(out.asnumpy()).all()


@pytest.mark.parametrize("key,value", [("added_emb_type", None), ("encoder_hid_proj_type", None),
                                       ("norm_in_type", "layer"), ("embedding_proj_norm_type", "layer"),
                                       ("time_embed_act_fn", "mish"), ("additional_embeddings", 3)])
def test_prior_unsupported_options(key, value):
    with pytest.raises(ValueError, match=key):
        PriorTransformer({key: value, "num_layers": 0, "num_attention_heads": 2, "attention_head_dim": 4,
                          "embedding_dim": 8})


def test_prior_defaults():
    cfg = PriorTransformer({"num_layers": 0}).config
    assert cfg["inner_dim"] == 2048 and cfg["time_embed_dim"] == 2048
    assert cfg["embedding_proj_dim"] == 768 and cfg["clip_embed_dim"] == 768


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_prior_prefix_and_step_equal_the_whole_sequence(mode):
    """PriorPipeline's per-step path: the text tokens' keys/values computed once (``prefix``), then ``step`` on the
    last three tokens, equals ``construct`` on the whole sequence (a causal prior, several layers, padded texts of
    different lengths), at every timestep, compiled or not."""
    from kandinsky_cli.layers import compiled

    config = dict(num_attention_heads=3, attention_head_dim=8, num_layers=3, embedding_dim=16, num_embeddings=10)
    cell = _randomize(PriorTransformer(config), seed=1)
    rng = np.random.default_rng(1)
    mask = np.ones((2, 10), np.float32)
    mask[0, 3:] = 0
    mask[1, 7:] = 0
    proj = Tensor(rng.standard_normal((2, 16)).astype(np.float32))
    hidden = Tensor(rng.standard_normal((2, 10, 16)).astype(np.float32))
    keys, values, step_mask = compiled(cell.prefix, mode)(proj, hidden, Tensor(mask))
    assert len(keys) == len(values) == 3 and keys[0].shape == (2, 11, 24) and step_mask.shape == (2, 1, 3, 14)
    whole, step = compiled(cell, mode), compiled(cell.step, mode)
    for t in (999, 500, 0):
        x = Tensor(rng.standard_normal((2, 16)).astype(np.float32))
        t_in = cell.timestep_input(t, 2)
        expected = whole(x, t_in, proj, hidden, Tensor(mask)).asnumpy()
        got = step(x, t_in, keys, values, step_mask).asnumpy()
        assert_scaled(got, expected, 1e-6, f"t={t}")
        # and the prefix matters: the step of another text differs
        other = step(x, t_in, keys[::-1], values[::-1], step_mask).asnumpy()
        assert scaled_error(other, expected) > 1e-3
