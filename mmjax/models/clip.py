"""Contrastive models over registered towers: CLIP and CoCa.

`CLIP` joins an image tower and a text tower (and an audio tower) with linear projections to a
shared embedding and a learned temperature (stored as a log scale, as in CLIP); `CoCa` adds a
multimodal caption decoder. Towers are chosen by name from `TOWERS`; adding a tower means one
class and one registry entry. The fusion models build on CLIP (mmjax/models/fusion.py);
every model is chosen by name in mmjax/models/__init__.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import conventions
from mmjax.models import cross_attention, layers
from mmjax.models.towers.audio_tower import AudioSpectrogramTransformer
from mmjax.models.towers.image_tower import VisionTransformer
from mmjax.models.towers.text_tower import TextTransformer
from mmjax.models.towers.video_tower import VideoTransformer


@dataclasses.dataclass(frozen=True)
class TowerKind:
    """What a modality's towers are and what the model hands them."""

    registry: dict[str, type]
    # The constructor argument that comes from the data or the tokenizer, not the tower config.
    input_argument: str
    # The tower's own stream of a training step's rng (patch dropout), apart from what the model
    # draws elsewhere.
    rng_stream: int


TOWERS = {
    "image": TowerKind({"vit": VisionTransformer}, "image_size", 0x1A6E),
    "audio": TowerKind({"ast": AudioSpectrogramTransformer}, "spectrogram_shape", 0xA0D1),
    "video": TowerKind({"vivit": VideoTransformer}, "video_shape", 0x71DE),
    "text": TowerKind({"transformer": TextTransformer}, "vocab_size", 0x7E27),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

def lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"Unknown {what} {name!r}; valid names: {sorted(registry)}.")
    return registry[name]


def _tower_kwargs(tower_config) -> dict[str, Any]:
    kwargs = dict(tower_config)
    kwargs.pop("name")
    return kwargs


class CLIP(nnx.Module):
    """Towers for two or more modalities (image, audio, video, text: those whose tower config is
    set), each projected to one shared embedding, and a learned temperature."""

    def __init__(self, *, embed_dim: int, image_tower=None, audio_tower=None, video_tower=None,
                 text_tower=None, vocab_size: int | None = None, image_size: int | None = None,
                 spectrogram_shape: tuple[int, int] | None = None,
                 video_shape: tuple[int, int] | None = None, dtype: str = "float32",
                 remat: str = "none", scan_layers: bool = False,
                 attention_implementation: str | None = None,
                 logit_scale_init: float = math.log(1 / 0.07), logit_scale_max: float = 100.0,
                 logit_bias_init: float | None = None, image_projection: bool = True,
                 text_projection_bias: bool = False, rngs: nnx.Rngs):
        """`image_projection` False: the image tower's pooled vector is the embedding (SigLIP's
        MAP head output; embed_dim must equal the tower's width). `text_projection_bias`: a bias
        on the text projection (SigLIP's text head)."""
        compute_dtype = lookup(DTYPES, dtype, "dtype")
        configs = {"image": image_tower, "audio": audio_tower, "video": video_tower,
                   "text": text_tower}
        inputs = {"image_size": image_size, "spectrogram_shape": spectrogram_shape,
                  "video_shape": video_shape, "vocab_size": vocab_size}
        self.modalities = conventions.model_modalities({f"{m}_tower": c
                                                        for m, c in configs.items()})
        if len(self.modalities) < 2:
            raise ValueError(f"A model needs towers for two modalities or more; this one has "
                             f"{list(self.modalities)}: set config.model.<modality>_tower.")
        shared = dict(dtype=compute_dtype, remat=remat, scan_layers=scan_layers, rngs=rngs,
                      attention_implementation=attention_implementation)
        for m in self.modalities:
            kind = TOWERS[m]
            tower_cls = lookup(kind.registry, configs[m]["name"], f"{m} tower")
            setattr(self, f"{m}_tower", tower_cls(**{kind.input_argument: inputs[
                kind.input_argument]}, **shared, **_tower_kwargs(configs[m])))
        if not image_projection and embed_dim != self.image_tower.width:
            raise ValueError(f"image_projection=False needs embed_dim ({embed_dim}) equal to the "
                             f"image tower's width ({self.image_tower.width}).")
        for m in self.modalities:
            tower = getattr(self, f"{m}_tower")
            setattr(self, f"{m}_projection", None if m == "image" and not image_projection else
                    layers.Dense(tower.width, embed_dim, ("embed", None), rngs=rngs,
                                 use_bias=m == "text" and text_projection_bias,
                                 dtype=compute_dtype))
        self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init, jnp.float32), logical_axes=())
        self.logit_scale_max = logit_scale_max
        # SigLIP's learned bias on the logits (None: no bias, as in CLIP).
        self.logit_bias = (None if logit_bias_init is None else
                           nnx.Param(jnp.asarray(logit_bias_init, jnp.float32), logical_axes=()))

    def encode(self, modality: str, inputs: jax.Array, rng: jax.Array | None = None):
        """(embedding, the tower's aux) of one modality's batch entry. `rng` only in training:
        a tower may drop patches (evaluation passes none)."""
        rng = None if rng is None else jax.random.fold_in(rng, TOWERS[modality].rng_stream)
        pooled, aux = getattr(self, f"{modality}_tower")(inputs, rng=rng)
        projection = getattr(self, f"{modality}_projection")
        if projection is not None:
            pooled = projection(pooled)
        return pooled.astype(jnp.float32), aux

    def encode_image(self, images: jax.Array, rng: jax.Array | None = None):
        return self.encode("image", images, rng)

    def encode_text(self, tokens: jax.Array):
        return self.encode("text", tokens)

    def encode_batch(self, batch: dict, rng: jax.Array | None = None) -> tuple[dict, dict]:
        """Every modality's embedding and tower aux, by modality name."""
        encoded = {m: self.encode(m, batch[conventions.BATCH_KEYS[m]], rng)
                   for m in self.modalities}
        return ({m: e for m, (e, _) in encoded.items()}, {m: a for m, (_, a) in encoded.items()})

    def temperature_scale(self) -> jax.Array:
        """exp(logit_scale), clipped at logit_scale_max as in CLIP."""
        return jnp.minimum(jnp.exp(self.logit_scale[...]), self.logit_scale_max)

    def __call__(self, batch: dict, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """What the losses need from a batch (entries by conventions.BATCH_KEYS): per-example
        outputs (batch-major) and global scalars."""
        return self._contrastive_outputs(self.encode_batch(batch, rng)[0])

    def _contrastive_outputs(self, embeddings: dict) -> dict[str, jax.Array]:
        outputs = {f"{m}_embedding": e for m, e in embeddings.items()}
        outputs["logit_scale"] = self.temperature_scale()
        if self.logit_bias is not None:
            outputs["logit_bias"] = self.logit_bias[...]
        return outputs


def cross_modal_kwargs(model: CLIP, stack: dict, compute_dtype, shared: dict,
                       context_width: int) -> dict:
    """A cross-modal stack's shape: the text tower's width and heads, its own depth."""
    text = model.text_tower
    first_block = text.encoder.blocks[0]
    return dict(width=text.width, num_heads=first_block.attention.query.shape[1],
                mlp_dim=stack.get("mlp_dim") or first_block.mlp.up.kernel.shape[1],
                depth=stack["depth"], context_width=context_width, dtype=compute_dtype,
                **shared)


class CoCa(CLIP):
    """CLIP plus a multimodal text decoder (CoCa): contrastive and captioning from one pass.

    The unimodal text tower (causal) gives the text embedding at its end-of-text token and feeds
    its states to the decoder, whose blocks cross-attend to the tokens of the tower it captions:
    the image tower's, or the first other modality's (a video tower's) when there is no image.
    """

    def __init__(self, *, decoder, dtype: str = "float32", remat: str = "none",
                 scan_layers: bool = False, attention_implementation: str | None = None,
                 rngs: nnx.Rngs, **clip_kwargs):
        super().__init__(dtype=dtype, remat=remat, scan_layers=scan_layers,
                         attention_implementation=attention_implementation, rngs=rngs,
                         **clip_kwargs)
        if not self.text_tower.causal:
            raise ValueError("CoCa's text tower must be causal: set "
                             "config.model.text_tower.causal=True.")
        shared = dict(remat=remat, scan_layers=scan_layers, rngs=rngs,
                      attention_implementation=attention_implementation)
        # The modality captioned; its batch entry is what generation starts from.
        self.captioned = next(m for m in self.modalities if m != "text")
        self.decoder = cross_attention.CaptionDecoder(
            vocab_size=self.text_tower.token_embedding.shape[0],
            **cross_modal_kwargs(self, dict(decoder), lookup(DTYPES, dtype, "dtype"), shared,
                                  self._captioned_tower.width))

    @property
    def _captioned_tower(self):
        return getattr(self, f"{self.captioned}_tower")

    def __call__(self, batch, rng=None):
        embeddings, aux = self.encode_batch(batch, rng)
        outputs = self._contrastive_outputs(embeddings)
        outputs["caption_logits"] = self.decoder(aux["text"]["tokens"],
                                                 aux[self.captioned]["tokens"])
        return outputs

    # -- generation --------------------------------------------------------------------------
    def start_decoding(self, images: jax.Array, batch: int) -> dict:
        """What decoding keeps: the captioned tokens' cross-attention keys/values and empty
        caches. `images`: the captioned modality's batch entry (images, or clips).

        `batch` may exceed the number of images (beams): image rows are repeated to match.
        """
        _, image_aux = self._captioned_tower(images)
        image_tokens = jnp.repeat(image_aux["tokens"], batch // images.shape[0], axis=0)
        return {"image_keys_values": self.decoder.image_keys_values(image_tokens),
                "text_cache": self.text_tower.empty_cache(batch),
                "decoder_cache": self.decoder.empty_cache(batch, self.text_tower.context_length)}

    def decode_step(self, token: jax.Array, position: jax.Array, state: dict):
        """Logits [batch, vocab] for the token after `token` (at `position`), and the new state."""
        hidden, text_cache = self.text_tower.decode(token, position, state["text_cache"])
        logits, decoder_cache = self.decoder.decode(hidden, state["decoder_cache"], position,
                                                    state["image_keys_values"])
        return logits, dict(state, text_cache=text_cache, decoder_cache=decoder_cache)

    def next_token_logits(self, images: jax.Array, tokens: jax.Array, position) -> jax.Array:
        """Without any cache: the full causal pass over `tokens`, read at `position`."""
        _, image_aux = self._captioned_tower(images)
        _, text_aux = self.text_tower(tokens)
        logits = self.decoder(text_aux["tokens"], image_aux["tokens"])
        return jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
