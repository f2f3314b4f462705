"""Transformer building blocks shared by the image and text towers.

Parameters are float32 and carry logical axis names (`logical_axes` metadata) that the sharding
rules map to mesh axes; computation runs in `dtype` (bfloat16 on accelerators), with layer norms,
softmax statistics and logits in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import sharding
from mmjax.models.layer_norm import LayerNorm

xavier_uniform = jax.nn.initializers.xavier_uniform()
zeros = jax.nn.initializers.zeros


def resolve_shape(what: str, variant_shape: dict, **explicit) -> dict:
    """A tower's shape: its named variant's, with every explicitly given field overriding it."""
    shape = dict(variant_shape)
    shape.update({k: v for k, v in explicit.items() if v is not None})
    missing = [k for k in explicit if k not in shape]
    if missing:
        raise ValueError(f"{what} needs a variant or explicit {missing}.")
    return shape


class Dense(nnx.Module):
    """x @ kernel (+ bias), with the kernel's logical axes given by the caller."""

    def __init__(self, in_features: int, out_features: int, logical_axes: tuple, *, rngs: nnx.Rngs,
                 use_bias: bool = True, dtype=jnp.float32, kernel_init: Callable = xavier_uniform):
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (in_features, out_features), jnp.float32),
            logical_axes=logical_axes,
        )
        self.bias = (
            nnx.Param(jnp.zeros((out_features,), jnp.float32), logical_axes=logical_axes[-1:])
            if use_bias
            else None
        )
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class MultiHeadAttention(nnx.Module):
    """Multi-head attention: `xla_attention`, or cuDNN's flash attention on NVIDIA GPUs.

    Queries come from `x`; keys and values from `context` (cross-attention) or `x` itself.
    """

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 context_width: int | None = None, implementation: str | None = None,
                 key_bias: bool = False):
        """`key_bias`: a bias on the keys too. It adds one amount to all of a query's scores,
        which softmax ignores, so it is off unless imported weights carry one (open_clip,
        transformers and big_vision models have it) and must come back out unchanged."""
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"Unknown attention implementation {implementation!r}; valid: "
                             f"{ATTENTION_IMPLEMENTATIONS}.")
        if width % num_heads:
            raise ValueError(f"Attention width {width} is not divisible by num_heads {num_heads}.")
        head_dim = width // num_heads
        context_width = context_width or width

        def projection(in_features):
            init = lambda key, shape, dtype: xavier_uniform(
                key, (in_features, width), dtype
            ).reshape(shape)
            return nnx.Param(init(rngs.params(), (in_features, num_heads, head_dim), jnp.float32),
                             logical_axes=("embed", "heads", "kv"))

        self.query = projection(width)
        self.key = projection(context_width)
        self.value = projection(context_width)
        self.query_bias = nnx.Param(jnp.zeros((num_heads, head_dim)), logical_axes=("heads", "kv"))
        self.value_bias = nnx.Param(jnp.zeros((num_heads, head_dim)), logical_axes=("heads", "kv"))
        self.key_bias = (nnx.Param(jnp.zeros((num_heads, head_dim)), logical_axes=("heads", "kv"))
                         if key_bias else None)
        out_init = xavier_uniform(rngs.params(), (width, width), jnp.float32)
        self.out = nnx.Param(out_init.reshape(num_heads, head_dim, width),
                             logical_axes=("heads", "kv", "embed"))
        self.out_bias = nnx.Param(jnp.zeros((width,)), logical_axes=("embed",))
        self.dtype = dtype
        self.implementation = implementation

    def _cast(self, param: nnx.Param) -> jax.Array:
        return param[...].astype(self.dtype)

    def project_keys_values(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values [batch, length, heads, head_dim] of `context` (cacheable)."""
        context = context.astype(self.dtype)
        k = jnp.einsum("bsd,dnh->bsnh", context, self._cast(self.key))
        v = jnp.einsum("bsd,dnh->bsnh", context, self._cast(self.value))
        if self.key_bias is not None:
            k = k + self._cast(self.key_bias)
        return k, v + self._cast(self.value_bias)

    def attend(self, x: jax.Array, k: jax.Array, v: jax.Array, *, is_causal: bool = False,
               key_lengths: jax.Array | None = None) -> jax.Array:
        """Queries from `x` over given keys and values; `key_lengths`: real leading keys."""
        x = x.astype(self.dtype)
        q = jnp.einsum("btd,dnh->btnh", x, self._cast(self.query)) + self._cast(self.query_bias)
        q = sharding.constrain(q, ("batch", "length", "heads", "kv"))
        if self.implementation == "cudnn":
            attended = padded_attention(q, k, v, is_causal=is_causal, key_lengths=key_lengths,
                                        implementation="cudnn")
        else:
            attended = xla_attention(q, k, v, is_causal=is_causal, key_lengths=key_lengths)
        return (jnp.einsum("btnh,nhd->btd", attended, self._cast(self.out))
                + self._cast(self.out_bias))

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
                 is_causal: bool = False, key_lengths: jax.Array | None = None) -> jax.Array:
        """Self-attention, or cross-attention to `context` when given."""
        k, v = self.project_keys_values(x if context is None else context)
        return self.attend(x, k, v, is_causal=is_causal, key_lengths=key_lengths)

    def decode(self, x: jax.Array, cache: dict, position: jax.Array) -> tuple[jax.Array, dict]:
        """Causal self-attention for the one new token `x` [batch, 1, width] at `position`.

        `cache` holds the keys and values of the positions before (see `empty_cache`); the new
        token's are written at `position` and attention reaches positions 0..position.
        """
        k, v = self.project_keys_values(x)
        keys = jax.lax.dynamic_update_slice_in_dim(cache["key"], k, position, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(cache["value"], v, position, axis=1)
        lengths = jnp.full((x.shape[0],), position + 1, jnp.int32)
        # The plain XLA path: one query row is not what flash attention kernels are for.
        x = x.astype(self.dtype)
        q = jnp.einsum("btd,dnh->btnh", x, self._cast(self.query)) + self._cast(self.query_bias)
        attended = jax.nn.dot_product_attention(q, keys, values, key_value_seq_lengths=lengths)
        out = (jnp.einsum("btnh,nhd->btd", attended, self._cast(self.out))
               + self._cast(self.out_bias))
        return out, {"key": keys, "value": values}

    def empty_cache(self, batch: int, length: int) -> dict:
        heads, head_dim = self.query.shape[1:]
        zeros = jnp.zeros((batch, length, heads, head_dim), self.dtype)
        return {"key": zeros, "value": zeros}


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, is_causal: bool = False,
                  key_lengths: jax.Array | None = None) -> jax.Array:
    """Attention [batch, length, heads, head_dim] as plain XLA ops, logits and softmax in
    float32: the computation of jax.nn.dot_product_attention's XLA path, without the vmap over
    head groups that wraps every product there in transposes and a five-axis layout (on the
    CPU that made attention 40 % of the CLIP step's operation time, BENCHMARKS.md)."""
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(q.shape[-1] ** -0.5)
    query_length, key_length = logits.shape[-2:]
    keep = None
    if is_causal:
        keep = jnp.tril(jnp.ones((query_length, key_length), bool))
    if key_lengths is not None:
        real = (jnp.arange(key_length) < key_lengths[:, None])[:, None, None, :]
        keep = real if keep is None else keep & real
    if keep is not None:
        logits = jnp.where(keep, logits, jnp.float32(-0.7 * jnp.finfo(jnp.float32).max))
    probabilities = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probabilities, v)


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, is_causal: bool,
                     key_lengths: jax.Array | None, multiple: int = 8,
                     implementation: str | None = None) -> jax.Array:
    """Attention over lengths padded to a multiple of `multiple`, equal to the unpadded one.

    cuDNN's flash attention refuses odd lengths when training (ViT's 197 tokens, CLIP's context of
    77), so queries, keys and values are padded, the padded keys masked through the key lengths,
    and the padded queries' rows dropped.
    """
    batch, query_length, key_length = q.shape[0], q.shape[1], k.shape[1]
    if query_length % multiple == 0 and key_length % multiple == 0:
        return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal,
                                            key_value_seq_lengths=key_lengths,
                                            implementation=implementation)
    pad = lambda a: jnp.pad(a, ((0, 0), (0, -a.shape[1] % multiple), (0, 0), (0, 0)))
    if key_lengths is None:
        key_lengths = jnp.full((batch,), key_length, jnp.int32)
    attended = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), is_causal=is_causal,
                                            key_value_seq_lengths=key_lengths,
                                            implementation=implementation)
    return attended[:, :query_length]


# None and "xla": plain XLA ops everywhere (xla_attention); "cudnn": cuDNN flash attention
# (NVIDIA GPUs, bfloat16 / float16 only).
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn")


class Mlp(nnx.Module):
    def __init__(self, width: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 activation: str = "gelu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}.")
        self.up = Dense(width, mlp_dim, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.down = Dense(mlp_dim, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = ACTIVATIONS[self.activation](self.up(x))
        hidden = sharding.constrain(hidden, ("batch", "length", "mlp"))
        return self.down(hidden)


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's activation
    "relu": jax.nn.relu,
}

# Remat policies by name. Blocks tag nothing yet, so "minimal" keeps every matmul output that
# has no batch dimension (weights-only products) and recomputes the rest.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,
}


class TransformerBlock(nnx.Module):
    """Pre-LN block: x + attn(LN(x)) [+ cross_attn(LN(x), context)] + mlp(LN(x))."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, activation: str = "gelu", context_width: int | None = None,
                 attention_implementation: str | None = None, norm_epsilon: float = 1e-6,
                 key_bias: bool = False):
        self.attention_norm = LayerNorm(width, dtype=dtype, epsilon=norm_epsilon)
        self.attention = MultiHeadAttention(width, num_heads, rngs=rngs, dtype=dtype,
                                            implementation=attention_implementation,
                                            key_bias=key_bias)
        if context_width is not None:
            self.cross_attention_norm = LayerNorm(width, dtype=dtype, epsilon=norm_epsilon)
            self.cross_attention = MultiHeadAttention(width, num_heads, rngs=rngs, dtype=dtype,
                                                      context_width=context_width,
                                                      implementation=attention_implementation)
        else:
            self.cross_attention_norm = self.cross_attention = None
        self.mlp_norm = LayerNorm(width, dtype=dtype, epsilon=norm_epsilon)
        self.mlp = Mlp(width, mlp_dim, rngs=rngs, dtype=dtype, activation=activation)

    def __call__(self, x, *, is_causal=False, key_lengths=None, context=None,
                 context_lengths=None):
        """`context_lengths`: each example's count of real context tokens (a prefix; None: all)."""
        x = x + self.attention(self.attention_norm(x), is_causal=is_causal, key_lengths=key_lengths)
        if self.cross_attention is not None:
            x = x + self.cross_attention(self.cross_attention_norm(x), context,
                                         key_lengths=context_lengths)
        x = x + self.mlp(self.mlp_norm(x))
        return sharding.constrain(x, ("batch", "length", "embed"))

    def decode(self, x, cache, position, context_keys_values=None, context_lengths=None):
        """One new token through the block, with cached self-attention keys and values."""
        attended, cache = self.attention.decode(self.attention_norm(x), cache, position)
        x = x + attended
        if self.cross_attention is not None:
            x = x + self.cross_attention.attend(self.cross_attention_norm(x),
                                                *context_keys_values, key_lengths=context_lengths)
        return x + self.mlp(self.mlp_norm(x)), cache


class Transformer(nnx.Module):
    """A stack of blocks followed by a final layer norm; `remat` names a policy in REMAT_POLICIES.

    With `scan_layers` the blocks run under `jax.lax.scan` over their stacked parameters, so one
    block is compiled whatever the depth. Parameters stay stored per block (checkpoints and
    sharding rules do not change); the stacking costs one copy of the blocks' parameters.
    """

    def __init__(self, width: int, depth: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, activation: str = "gelu", remat: str = "none",
                 scan_layers: bool = False, context_width: int | None = None,
                 attention_implementation: str | None = None, norm_epsilon: float = 1e-6,
                 key_bias: bool = False):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"Unknown remat policy {remat!r}; valid: {sorted(REMAT_POLICIES)}.")
        self.blocks = nnx.List([
            TransformerBlock(width, num_heads, mlp_dim, rngs=rngs, dtype=dtype,
                             activation=activation, context_width=context_width,
                             attention_implementation=attention_implementation,
                             norm_epsilon=norm_epsilon, key_bias=key_bias)
            for _ in range(depth)
        ])
        self.final_norm = LayerNorm(width, dtype=dtype, epsilon=norm_epsilon)
        self.remat = remat
        self.scan_layers = scan_layers

    def __call__(self, x, **block_kwargs):
        graphdef = nnx.graphdef(self.blocks[0])

        def apply_block(y, block_state):
            return nnx.merge(graphdef, block_state)(y, **block_kwargs)

        if self.remat != "none":
            apply_block = jax.checkpoint(apply_block, policy=REMAT_POLICIES[self.remat])
        block_states = [nnx.state(block) for block in self.blocks]
        if self.scan_layers:
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *block_states)
            x, _ = jax.lax.scan(lambda y, state: (apply_block(y, state), None), x, stacked)
        else:
            for block_state in block_states:
                x = apply_block(x, block_state)
        return self.final_norm(x)

    # -- incremental decoding (causal stacks) ------------------------------------------------
    def empty_cache(self, batch: int, length: int) -> list[dict]:
        return [block.attention.empty_cache(batch, length) for block in self.blocks]

    def context_keys_values(self, context: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Each block's cross-attention keys and values of `context`, computed once per decode."""
        return [block.cross_attention.project_keys_values(context) for block in self.blocks]

    def decode(self, x, cache: list[dict], position, context_keys_values=None,
               context_lengths=None):
        """The stack on one new token [batch, 1, width]: equal to the causal full pass's row."""
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, block_cache = block.decode(
                x, cache[i], position,
                None if context_keys_values is None else context_keys_values[i], context_lengths)
            new_cache.append(block_cache)
        return self.final_norm(x), new_cache


class AttentionPool(nnx.Module):
    """Multi-head attention pooling from a learned probe (big_vision's MAP head)."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, attention_implementation: str | None = None,
                 norm_epsilon: float = 1e-6, key_bias: bool = False):
        self.probe = nnx.Param(xavier_uniform(rngs.params(), (1, width), jnp.float32),
                               logical_axes=(None, "embed"))
        self.attention = MultiHeadAttention(width, num_heads, rngs=rngs, dtype=dtype,
                                            implementation=attention_implementation,
                                            key_bias=key_bias)
        self.norm = LayerNorm(width, dtype=dtype, epsilon=norm_epsilon)
        self.mlp = Mlp(width, mlp_dim, rngs=rngs, dtype=dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...], (tokens.shape[0],) + self.probe[...].shape)
        pooled = self.attention(probe, tokens)
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]
