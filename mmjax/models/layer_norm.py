"""Layer normalisation in float32 with a hand-written backward pass (the towers' every block)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """(x - mean) / sqrt(variance + epsilon) * scale + bias over the last axis, in float32.

    The gradient is written out rather than derived op by op: one pass over the normalised
    values and two means, where autodiff's has several more elementwise passes (on the CPU the
    layer norms were a fifth of the CLIP step's operation time, BENCHMARKS.md). The backward
    pass keeps the smaller of two things: the float32 normalised values when x is float32, or
    x itself when its dtype is narrower (bfloat16 activations: half the bytes), from which the
    normalised values are recomputed."""
    return _layer_norm_forward(x, scale, bias, epsilon)[0]


def _normalise(x, mean, inverse_std):
    return (x.astype(jnp.float32) - mean) * inverse_std


def _layer_norm_forward(x, scale, bias, epsilon):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    inverse_std = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + epsilon)
    normalised = _normalise(x, mean, inverse_std)
    kept = normalised if x.dtype == jnp.float32 else x
    return normalised * scale + bias, (kept, mean, inverse_std, scale)


def _layer_norm_backward(epsilon, residuals, grad):
    del epsilon
    kept, mean, inverse_std, scale = residuals
    normalised = kept if kept.dtype == jnp.float32 else _normalise(kept, mean, inverse_std)
    grad_normalised = grad * scale
    grad_x = inverse_std * (grad_normalised - grad_normalised.mean(-1, keepdims=True)
                            - normalised * (grad_normalised * normalised).mean(-1, keepdims=True))
    batch_axes = tuple(range(grad.ndim - 1))
    return (grad_x.astype(kept.dtype), (grad * normalised).sum(batch_axes),
            grad.sum(batch_axes))


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nnx.Module):
    def __init__(self, features: int, *, dtype=jnp.float32, epsilon: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32), logical_axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32), logical_axes=("norm",))
        self.dtype = dtype
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.epsilon).astype(self.dtype)
