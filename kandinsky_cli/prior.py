"""diffusers ``PriorTransformer`` (the Kandinsky 2.1 prior) in MindSpore.

Parameter names mirror the diffusers checkpoint (``diffusion_pytorch_model.safetensors``). Only the configuration
that Kandinsky uses is supported (added_emb_type "prd", encoder_hid_proj_type "linear", no norm_in, no
embedding_proj_norm); any other value is a ``ModelError`` naming the key instead of being silently ignored.

The sinusoidal timestep projection is computed on the host (``layers.timestep_embedding``) and passed to
``construct`` as a Tensor, so the Cell holds no Python-int timestep; ``predict`` does this for you.
"""
from __future__ import annotations


import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from . import layers, model_io
from .layers import LayerNorm, Linear
from .model_io import Config

# diffusers PriorTransformer.__init__ defaults (used for keys absent from config.json).
PRIOR_DEFAULTS = dict(num_attention_heads=32, attention_head_dim=64, num_layers=20, embedding_dim=768,
                      num_embeddings=77, additional_embeddings=4, dropout=0.0, time_embed_act_fn="silu",
                      norm_in_type=None, embedding_proj_norm_type=None, encoder_hid_proj_type="linear",
                      added_emb_type="prd", time_embed_dim=None, embedding_proj_dim=None, clip_embed_dim=None)

# diffusers get_activation names accepted for time_embed_act_fn.
_TIME_ACTIVATIONS = {"silu": ops.silu, "swish": ops.silu, "gelu": layers.gelu, "relu": ops.relu}

MASK_VALUE = -10000.0


def prior_config(config) -> dict:
    """The effective PriorTransformer config: config.json over diffusers' defaults, every value typed and
    checked; unknown keys ignored."""
    cfg = Config.of(config, "PriorTransformer config")
    d = PRIOR_DEFAULTS
    out = {key: cfg.int(key, d[key], min=1)
           for key in ("num_attention_heads", "attention_head_dim", "embedding_dim", "num_embeddings")}
    out["num_layers"] = cfg.int("num_layers", d["num_layers"], min=0)
    # [encoder tokens, proj_embedding, time, x, prd]: diffusers' mask/positional shapes only agree for 4.
    out["additional_embeddings"] = cfg.choice("additional_embeddings", (4,), d["additional_embeddings"])
    out["dropout"] = cfg.float("dropout", d["dropout"], min=0)  # inference: no dropout
    out["time_embed_act_fn"] = cfg.choice("time_embed_act_fn", tuple(_TIME_ACTIVATIONS), d["time_embed_act_fn"])
    for key in ("added_emb_type", "encoder_hid_proj_type", "norm_in_type", "embedding_proj_norm_type"):
        out[key] = cfg.choice(key, (d[key],), d[key])  # the only configuration Kandinsky uses
    inner = out["num_attention_heads"] * out["attention_head_dim"]
    out["inner_dim"] = inner
    for key, fallback in (("time_embed_dim", inner), ("embedding_proj_dim", out["embedding_dim"]),
                          ("clip_embed_dim", out["embedding_dim"])):
        out[key] = cfg.int(key, None, min=1) or fallback
    return out


def embedding_width(config) -> int:
    """The width of the image embeddings a prior with this config.json makes (clip_embed_dim)."""
    return prior_config(config)["clip_embed_dim"]


class TimestepEmbedding(nn.Cell):
    """diffusers ``TimestepEmbedding``: linear_2(act(linear_1(x)))."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, act: str):
        super().__init__()
        self.linear_1 = Linear(in_dim, hidden_dim)
        self.act = _TIME_ACTIVATIONS[act]
        self.linear_2 = Linear(hidden_dim, out_dim)

    def construct(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class SelfAttention(layers.AttentionCell):
    """diffusers ``Attention`` used as self-attention: ``to_q``/``to_k``/``to_v`` (bias), ``to_out.0``."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = Linear(dim, inner)
        self.to_k = Linear(dim, inner)
        self.to_v = Linear(dim, inner)
        self.to_out = nn.CellList([Linear(inner, dim)])

    def construct(self, x, mask=None, past_keys=None, past_values=None):
        """(output, keys, values): ``past_keys``/``past_values`` (B, P, inner), those of P earlier tokens, come
        before this call's tokens in the keys and values attended to (and returned)."""
        keys, values = self.to_k(x), self.to_v(x)
        if past_keys is not None:
            keys = ops.concat((past_keys, keys), 1)
            values = ops.concat((past_values, values), 1)
        out = layers.attention(self.to_q(x), keys, values, self.heads, mask, self.bf16)
        return self.to_out[0](out), keys, values


class GELUProj(nn.Cell):
    """diffusers ``GELU`` activation module: exact-erf gelu(proj(x))."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out)

    def construct(self, x):
        return layers.gelu(self.proj(x))


class FeedForward(nn.Cell):
    """``net.0`` = GELU(proj), ``net.1`` = dropout (no parameters), ``net.2`` = Linear."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.CellList([GELUProj(dim, dim * mult), nn.Identity(), Linear(dim * mult, dim)])

    def construct(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Cell):
    """Self-attention-only block: h += attn1(norm1(h), mask); h += ff(norm3(h)). LayerNorm eps 1e-5."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = LayerNorm(dim, 1e-5)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = LayerNorm(dim, 1e-5)
        self.ff = FeedForward(dim)

    def construct(self, x, mask=None, past_keys=None, past_values=None):
        """(output, keys, values) of the self-attention (see :meth:`SelfAttention.construct`)."""
        attended, keys, values = self.attn1(self.norm1(x), mask, past_keys, past_values)
        x = x + attended
        return x + self.ff(self.norm3(x)), keys, values


class PriorTransformer(nn.Cell):
    """The unCLIP prior: predicts a CLIP image embedding from a noisy one and the text conditioning.

    ``construct(hidden_states (B, E), timestep_embedding_input (B, inner) = sinusoid(t), proj_embedding (B, E),
    encoder_hidden_states (B, num_embeddings, E), attention_mask (B, num_embeddings) bool or 0/1 or None)``
    -> predicted image embedding (B, clip_embed_dim).
    """

    def __init__(self, config: dict):
        super().__init__()
        cfg = prior_config(config)
        self.config = cfg
        inner = cfg["inner_dim"]
        heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
        emb_dim = cfg["embedding_dim"]
        self.inner_dim = inner
        self.embedding_dim = emb_dim
        self.clip_embed_dim = cfg["clip_embed_dim"]
        self.additional_embeddings = cfg["additional_embeddings"]
        seq = cfg["num_embeddings"] + cfg["additional_embeddings"]

        self.time_embedding = TimestepEmbedding(inner, cfg["time_embed_dim"], inner, cfg["time_embed_act_fn"])
        self.proj_in = Linear(emb_dim, inner)
        self.embedding_proj = Linear(cfg["embedding_proj_dim"], inner)
        self.encoder_hidden_states_proj = Linear(emb_dim, inner)
        self.positional_embedding = Parameter(Tensor(np.zeros((1, seq, inner), np.float32)),
                                              name="positional_embedding")
        self.prd_embedding = Parameter(Tensor(np.zeros((1, 1, inner), np.float32)), name="prd_embedding")
        self.transformer_blocks = nn.CellList([BasicTransformerBlock(inner, heads, head_dim)
                                               for _ in range(cfg["num_layers"])])
        self.norm_out = LayerNorm(inner, 1e-5)
        self.proj_to_clip_embeddings = Linear(inner, cfg["clip_embed_dim"])
        self.clip_mean = Parameter(Tensor(np.zeros((1, cfg["clip_embed_dim"]), np.float32)), name="clip_mean")
        self.clip_std = Parameter(Tensor(np.zeros((1, cfg["clip_embed_dim"]), np.float32)), name="clip_std")
        # diffusers' non-persistent buffer: -10000 strictly above the diagonal.
        causal = np.triu(np.full((seq, seq), MASK_VALUE, dtype=np.float32), 1)
        self.causal_attention_mask = Tensor(causal[None])  # (1, seq, seq)

    def construct(self, hidden_states, timestep_embedding_input, proj_embedding, encoder_hidden_states,
                  attention_mask=None):
        b = hidden_states.shape[0]
        h = ops.concat((self._prefix_tokens(proj_embedding, encoder_hidden_states),
                        self._step_tokens(hidden_states, timestep_embedding_input)), 1)
        h = h + self.positional_embedding.astype(h.dtype)
        mask = None if attention_mask is None else self._attention_mask(attention_mask, b, h.dtype)
        for block in self.transformer_blocks:
            h, _, _ = block(h, mask)
        return self._output(h)

    # The prior attends causally (when it has an attention mask, as in every pipeline call): a token sees only
    # itself and the tokens before it. Its tokens are [text tokens, text embedding, time, x, prd]: the first
    # ``num_embeddings + 1`` do not depend on the step, so their keys and values in every layer are the same
    # at every denoising step. ``prefix`` computes them once per prompt; ``step`` runs only the last 3 tokens
    # against them: the same result as ``construct`` at ~3/81 of its products per step.
    def prefix(self, proj_embedding, encoder_hidden_states, attention_mask):
        """The step-independent part of ``construct`` (``attention_mask`` required: without one the prior is not
        causal): (keys, values) per layer, each a tuple of (B, num_embeddings + 1, inner), and the attention mask
        of the step tokens (B, 1, 3, seq), to pass to :meth:`step`."""
        b = proj_embedding.shape[0]
        h = self._prefix_tokens(proj_embedding, encoder_hidden_states)
        count = h.shape[1]
        h = h + self.positional_embedding[:, :count].astype(h.dtype)
        mask = self._attention_mask(attention_mask, b, h.dtype)
        prefix_mask = mask[:, :, :count, :count]
        keys, values = (), ()
        for block in self.transformer_blocks:
            h, k, v = block(h, prefix_mask)
            keys += (k,)
            values += (v,)
        return keys, values, mask[:, :, count:, :]

    def step(self, hidden_states, timestep_embedding_input, keys, values, step_mask):
        """``construct`` given :meth:`prefix`'s keys, values and step mask for the same conditioning."""
        h = self._step_tokens(hidden_states, timestep_embedding_input)
        h = h + self.positional_embedding[:, -h.shape[1]:].astype(h.dtype)
        for i, block in enumerate(self.transformer_blocks):
            h, _, _ = block(h, step_mask, keys[i], values[i])
        return self._output(h)

    def _prefix_tokens(self, proj_embedding, encoder_hidden_states):
        """[text tokens, text embedding] (B, num_embeddings + 1, inner), before the positional embedding."""
        dtype = self.positional_embedding.dtype    # the compute dtype (bf16 networks drop Dense weights)
        enc = self.encoder_hidden_states_proj(encoder_hidden_states.astype(dtype))  # (B, L, inner)
        proj = self.embedding_proj(proj_embedding.astype(dtype))  # (B, inner)
        return ops.concat((enc, proj[:, None]), 1)

    def _step_tokens(self, hidden_states, timestep_embedding_input):
        """[time, x, prd] (B, 3, inner), before the positional embedding."""
        dtype = self.positional_embedding.dtype
        b = hidden_states.shape[0]
        temb = self.time_embedding(timestep_embedding_input.astype(dtype))  # (B, inner)
        x = self.proj_in(hidden_states.astype(dtype))  # (B, inner)
        prd = ops.broadcast_to(self.prd_embedding.astype(dtype), (b, 1, self.inner_dim))
        return ops.concat((temb[:, None], x[:, None], prd), 1)

    def _attention_mask(self, attention_mask, b: int, dtype):
        """diffusers' additive mask (B, 1, seq, seq), the same for every head: padded text tokens, and causal."""
        m = (1.0 - attention_mask.astype(dtype)) * MASK_VALUE  # (B, L)
        pad = ops.zeros((b, self.additional_embeddings), dtype)
        m = ops.concat((m, pad), 1)  # (B, L + additional)
        mask = (m[:, None, :] + self.causal_attention_mask.astype(dtype)).astype(dtype)
        return mask[:, None]

    def _output(self, h):
        return self.proj_to_clip_embeddings(self.norm_out(h)[:, -1])

    def timestep_input(self, t, batch: int) -> Tensor:
        """Host-side sinusoidal projection of timestep(s) ``t`` (int or array of B), float32 (B, inner)."""
        steps = np.broadcast_to(np.asarray(t, dtype=np.float32).reshape(-1), (batch,))
        emb = layers.timestep_embedding(steps, self.inner_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return Tensor(emb)

    def predict(self, hidden_states, t, proj_embedding, encoder_hidden_states, attention_mask=None):
        """``construct`` with an integer timestep ``t`` (or one per batch row)."""
        return self(hidden_states, self.timestep_input(t, hidden_states.shape[0]), proj_embedding,
                    encoder_hidden_states, attention_mask)

    def post_process_latents(self, latents):
        return latents * self.clip_std.astype(latents.dtype) + self.clip_mean.astype(latents.dtype)

    @classmethod
    def from_pretrained(cls, component_dir, dtype=None) -> "PriorTransformer":
        return model_io.build_and_load(cls, component_dir, model_io.DIFFUSERS_WEIGHTS, dtype)
