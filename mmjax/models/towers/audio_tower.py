"""Audio tower (AST): the log-mel spectrogram as a one-channel image, through mmjax's ViT.

The spectrogram [batch, frames, mel bins] is cut into non-overlapping patches of frames x mel
bins; everything after the patch embedding is the image tower's, with the same parameter names
and logical axes, so the sharding rules need no audio entries. As in AST, the tower can start
from a trained image tower (`from_image_tower`): the patch embedding summed over RGB and the
position embeddings interpolated to the spectrogram's patch grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.towers.image_tower import VisionTransformer


class AudioSpectrogramTransformer(VisionTransformer):
    def __init__(self, *, spectrogram_shape: tuple[int, int], **vit_kwargs):
        """`spectrogram_shape`: (frames, mel bins), each a multiple of the patch size."""
        super().__init__(image_size=tuple(spectrogram_shape), channels=1, **vit_kwargs)
        self.spectrogram_shape = tuple(spectrogram_shape)

    def __call__(self, spectrogram: jax.Array, rng: jax.Array | None = None):
        if spectrogram.shape[1:] != self.spectrogram_shape:
            raise ValueError(f"Spectrogram of shape {spectrogram.shape[1:]} where the audio "
                             f"tower takes {self.spectrogram_shape} (frames, mel bins): set "
                             "config.data.audio.frames / num_mels to what the tower was built for.")
        # Log-mel values are already normalised (Whisper's scaling), so they go in as they are.
        return super().__call__(spectrogram.astype(self.dtype)[..., None], rng=rng)


def _interpolate_grid(embedding: np.ndarray, old_grid, new_grid) -> np.ndarray:
    """[rows * cols, width] position embeddings on one patch grid -> another (bilinear)."""
    grid = embedding.reshape(*old_grid, embedding.shape[-1])
    resized = jax.image.resize(jnp.asarray(grid), (*new_grid, grid.shape[-1]), "linear")
    return np.asarray(resized).reshape(new_grid[0] * new_grid[1], -1)


def square_grid(positions: int) -> tuple[tuple[int, int], int]:
    """The (rows, columns) of a square image's patch grid from its position embeddings' count,
    and the rows before the grid (1 with a class position)."""
    for extra in (0, 1):
        side = int(round((positions - extra) ** 0.5))
        if side * side == positions - extra:
            return (side, side), extra
    raise ValueError(f"{positions} position embeddings are no square patch grid")


def from_image_tower(image: dict[str, np.ndarray], audio: dict[str, tuple],
                     audio_grid: tuple[int, int]) -> dict:
    """An image tower's parameters (names relative to the tower) as the audio tower's, whose
    parameter shapes are `audio`. The patch embedding's RGB kernels are summed (AST does so: a
    grey image's response is kept); the position embeddings are resampled from the image's
    square patch grid to the spectrogram's `audio_grid` (a class token's row is kept); every
    other parameter is copied and must have the same shape (the same ViT size)."""
    converted = {}
    for name, shape in audio.items():
        if name not in image:
            raise ValueError(f"The image tower has no {name!r}: initialise the audio tower from "
                             "an image tower of the same ViT size and pooling.")
        value = np.asarray(image[name])
        if name == "patch_embedding/kernel":
            patch = int(round((value.shape[0] / 3) ** 0.5))
            if patch * patch != shape[0]:
                raise ValueError(f"The image tower's patches are {patch}x{patch}, the audio "
                                 f"tower's {int(shape[0] ** 0.5)}x{int(shape[0] ** 0.5)}: give the "
                                 "audio tower the image tower's patch size.")
            value = value.reshape(patch, patch, 3, -1).sum(axis=2).reshape(patch * patch, -1)
        elif name == "position_embedding":
            image_grid, extra = square_grid(value.shape[0])
            value = np.concatenate([value[:extra], _interpolate_grid(
                value[extra:], image_grid, audio_grid)])
        if value.shape != tuple(shape):
            raise ValueError(f"{name}: the image tower's is {value.shape}, the audio tower's "
                             f"{tuple(shape)}: use an image tower of the same ViT size.")
        converted[name] = value
    return converted
