"""Video tower (ViViT): a ViT over tubelets of `tubelet_frames` frames x p x p pixels.

A clip [batch, frames, height, width, 3] is cut into tubelets, each embedded by one linear map
(ViViT's tubelet embedding). Two encoders:

- "joint": every tubelet token attends to every other, across space and time (ViViT model 1);
  the image tower's encoder, pooling and patch dropout (FLIP), with the same parameter names and
  logical axes.
- "factorised": the image tower's encoder over each time step's tokens, pooled per step, then a
  temporal Transformer (`temporal_depth` blocks) over the steps, pooled again (ViViT model 2).

Position embeddings are "learned" (one per tubelet) or "separable" (a spatial grid's plus a time
step's). `from_image_tower` starts the tower from a trained image tower: the patch kernel copied
to each frame of the tubelet and divided by their number (a still clip gives the image's patch
embedding) and the spatial positions copied to every time step, so that with joint attention and
gap or map pooling a clip of one repeated frame has the image's embedding exactly (a class token
sees the repeated tokens as more weight against itself: close, not equal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax import sharding
from mmjax.models import layers
from mmjax.models.towers.image_tower import (
    SHAPE_FIELDS,
    VisionTransformer,
    keep_random_patches,
    normalize_pixels,
    patches_kept,
    tower_shape,
)

ATTENTION_TYPES = ("joint", "factorised")
POSITION_TYPES = ("learned", "separable")


class VideoTransformer(VisionTransformer):
    def __init__(self, *, video_shape: tuple[int, int], tubelet_frames: int = 2,
                 attention: str = "joint", positions: str = "learned", temporal_depth: int = 4,
                 **vit_kwargs):
        """`video_shape`: (frames, image size) of the clips the input pipeline gives.

        The ViT underneath sees a clip as an image whose rows of patches are the time steps and
        whose channels are a tubelet's frames x RGB: its patch grid is (time steps x rows,
        columns), so its parameters are the image tower's with wider patches."""
        frames, size = video_shape
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"Unknown video attention {attention!r}; valid: "
                             f"{list(ATTENTION_TYPES)}.")
        if positions not in POSITION_TYPES:
            raise ValueError(f"Unknown video position embedding {positions!r}; valid: "
                             f"{list(POSITION_TYPES)}.")
        if frames % tubelet_frames:
            raise ValueError(f"Clips of {frames} frames do not cut into tubelets of "
                             f"{tubelet_frames}: set config.data.video.frames to a multiple of "
                             "config.model.video_tower.tubelet_frames.")
        if attention == "factorised" and vit_kwargs.get("pooling", "map") == "map":
            vit_kwargs["pooling"] = "gap"  # each time step is pooled before the temporal blocks
        self.steps = frames // tubelet_frames
        super().__init__(image_size=(self.steps * size, size), channels=3 * tubelet_frames,
                         **vit_kwargs)
        self.video_shape, self.tubelet_frames = (frames, size), tubelet_frames
        self.attention, self.position_type = attention, positions
        rngs, width = vit_kwargs["rngs"], self.width
        spatial = self.grid[0] // self.steps * self.grid[1]
        if positions == "separable":
            if self.class_position:
                raise ValueError("Separable positions have no class position: set "
                                 "class_position=False.")
            self.position_embedding = nnx.Param(
                jax.random.normal(rngs.params(), (spatial, width)) * 0.02,
                logical_axes=("length", "embed"))
            self.time_embedding = nnx.Param(jnp.zeros((self.steps, width)),
                                            logical_axes=(None, "embed"))
        factorised = attention == "factorised"
        if factorised:
            shape = tower_shape(vit_kwargs.get("variant"),
                                **{k: vit_kwargs.get(k) for k in SHAPE_FIELDS})
            # The temporal encoder's positions: one a time step.
            self.step_embedding = nnx.Param(jnp.zeros((self.steps, width)),
                                            logical_axes=(None, "embed"))
        self.temporal_encoder = layers.Transformer(
            width, temporal_depth, shape["num_heads"], shape["mlp_dim"], rngs=rngs,
            dtype=vit_kwargs.get("dtype", jnp.float32),
            norm_epsilon=vit_kwargs.get("norm_epsilon", 1e-6),
            attention_implementation=vit_kwargs.get("attention_implementation"),
        ) if factorised else None

    def patchify(self, video: jax.Array) -> jax.Array:
        """[batch, frames, H, W, 3] -> [batch, steps * rows * columns, p * p * tubelet * 3],
        time step-major; a tubelet's vector is (row, column, frame, channel)."""
        batch, frames, height, width, channels = video.shape
        p, t = self.patch_size, self.tubelet_frames
        tubelets = video.reshape(batch, frames // t, t, height // p, p, width // p, p, channels)
        tubelets = tubelets.transpose(0, 1, 3, 5, 4, 6, 2, 7)
        return tubelets.reshape(batch, -1, p * p * t * channels)

    def positions(self) -> jax.Array:
        if self.position_type == "learned":
            return self.position_embedding[...]
        spatial, time = self.position_embedding[...], self.time_embedding[...]
        return (time[:, None, :] + spatial[None]).reshape(-1, spatial.shape[-1])

    def __call__(self, video: jax.Array, rng: jax.Array | None = None):
        """`video`: uint8 (normalised here) or float [batch, frames, size, size, 3]."""
        if tuple(video.shape[1:3]) != self.video_shape or video.shape[3] != video.shape[2]:
            raise ValueError(
                f"Clips of shape {tuple(video.shape[1:])} where the video tower takes "
                f"{self.video_shape[0]} frames of {self.video_shape[1]}x{self.video_shape[1]}: "
                "set config.data.video.frames and config.data.image_size to what it was built "
                "for.")
        if self.attention == "joint":
            return super().__call__(video, rng=rng)
        return self._factorised(video, rng)

    def _factorised(self, video: jax.Array, rng: jax.Array | None):
        """Spatial encoder per time step, then the temporal encoder over the steps."""
        batch = video.shape[0]
        video = normalize_pixels(video, self.input_normalization)
        tokens = self.patch_embedding(self.patchify(video))
        tokens = tokens + self.positions().astype(self.dtype)[int(self.class_position):]
        tokens = tokens.reshape(batch * self.steps, -1, self.width)
        if rng is not None and self.patch_dropout:
            tokens = keep_random_patches(tokens, rng,
                                         patches_kept(tokens.shape[1], self.patch_dropout))
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype),
                                   (tokens.shape[0], 1, self.width))
            tokens = jnp.concatenate([cls, tokens], axis=1)
        if self.pre_norm is not None:
            tokens = self.pre_norm(tokens)
        tokens = self.encoder(sharding.constrain(tokens, ("batch", "length", "embed")))
        steps = tokens[:, 0] if self.cls_token is not None else tokens.mean(axis=1)
        steps = steps.reshape(batch, self.steps, self.width)
        steps = steps + self.step_embedding[...].astype(self.dtype)
        steps = self.temporal_encoder(sharding.constrain(steps, ("batch", "length", "embed")))
        pooled = steps.mean(axis=1)
        return pooled, {"tokens": steps, "pre_logits": pooled}


def from_image_tower(image: dict[str, np.ndarray], video: dict[str, tuple],
                     tubelet_frames: int, steps: int) -> dict:
    """An image tower's parameters (names relative to the tower) as the video tower's, whose
    parameter shapes are `video`: the patch kernel spread over the tubelet's frames (each
    frame's copy divided by their number), the spatial position embeddings repeated over the
    `steps` time steps (learned positions) or copied (separable: time starts at zero). Parameters
    the image tower lacks (a factorised tower's temporal encoder) keep their initial values;
    every other must have the same shape (the same ViT size and patch size)."""
    converted = {}
    for name, shape in video.items():
        if name not in image:
            if name.startswith(("temporal_encoder/", "time_embedding", "step_embedding")):
                continue
            raise ValueError(f"The image tower has no {name!r}: initialise the video tower from "
                             "an image tower of the same ViT size and pooling.")
        value = np.asarray(image[name])
        if name == "patch_embedding/kernel":
            rows = value.reshape(-1, 3, value.shape[-1])  # (row, column) x RGB
            if rows.shape[0] * 3 * tubelet_frames != shape[0]:
                raise ValueError(f"The image tower's patches hold {rows.shape[0]} pixels, the "
                                 f"video tower's {shape[0] // (3 * tubelet_frames)}: give the "
                                 "video tower the image tower's patch size.")
            value = np.repeat(rows[:, None] / tubelet_frames, tubelet_frames, axis=1).reshape(
                shape)
        elif name == "position_embedding" and value.shape[0] * steps == shape[0]:
            value = np.tile(value, (steps, 1))
        if value.shape != tuple(shape):
            raise ValueError(f"{name}: the image tower's is {value.shape}, the video tower's "
                             f"{tuple(shape)}: use an image tower of the same ViT size (and no "
                             "class position).")
        converted[name] = value
    return converted
