"""Image-text models assembled from registered towers.

`CLIP` joins an image tower and a text tower with linear projections to a shared embedding and a
learned temperature (stored as a log scale, as in CLIP). Towers and models are chosen by name from
the registries below; adding a tower means one class and one registry entry.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import conventions, fusion, layers, losses
from mmjax.audio_tower import AudioSpectrogramTransformer
from mmjax.conventions import image_normalization
from mmjax.image_tokenizer import ImageTokenizer
from mmjax.image_tower import VisionTransformer
from mmjax.text_to_image import TextToImage
from mmjax.text_tower import TextTransformer

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
    "text": TowerKind({"transformer": TextTransformer}, "vocab_size", 0x7E27),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"Unknown {what} {name!r}; valid names: {sorted(registry)}.")
    return registry[name]


def _tower_kwargs(tower_config) -> dict[str, Any]:
    kwargs = dict(tower_config)
    kwargs.pop("name")
    return kwargs


class CLIP(nnx.Module):
    """Towers for two or more modalities (image, audio, text: those whose tower config is set),
    each projected to one shared embedding, and a learned temperature."""

    def __init__(self, *, embed_dim: int, image_tower=None, audio_tower=None, text_tower=None,
                 vocab_size: int | None = None, image_size: int | None = None,
                 spectrogram_shape: tuple[int, int] | None = None, dtype: str = "float32",
                 remat: str = "none", scan_layers: bool = False,
                 attention_implementation: str | None = None,
                 logit_scale_init: float = math.log(1 / 0.07), logit_scale_max: float = 100.0,
                 logit_bias_init: float | None = None, image_projection: bool = True,
                 text_projection_bias: bool = False, rngs: nnx.Rngs):
        """`image_projection` False: the image tower's pooled vector is the embedding (SigLIP's
        MAP head output; embed_dim must equal the tower's width). `text_projection_bias`: a bias
        on the text projection (SigLIP's text head)."""
        compute_dtype = _lookup(DTYPES, dtype, "dtype")
        configs = {"image": image_tower, "audio": audio_tower, "text": text_tower}
        inputs = {"image_size": image_size, "spectrogram_shape": spectrogram_shape,
                  "vocab_size": vocab_size}
        self.modalities = conventions.model_modalities({f"{m}_tower": c
                                                        for m, c in configs.items()})
        if len(self.modalities) < 2:
            raise ValueError(f"A model needs towers for two modalities or more; this one has "
                             f"{list(self.modalities)}: set config.model.<modality>_tower.")
        shared = dict(dtype=compute_dtype, remat=remat, scan_layers=scan_layers, rngs=rngs,
                      attention_implementation=attention_implementation)
        for m in self.modalities:
            kind = TOWERS[m]
            tower_cls = _lookup(kind.registry, configs[m]["name"], f"{m} tower")
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


def _cross_modal_kwargs(model: CLIP, stack: dict, compute_dtype, shared: dict,
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
    its states to the decoder, whose blocks cross-attend to the image tower's tokens.
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
        self.decoder = fusion.CaptionDecoder(
            vocab_size=self.text_tower.token_embedding.shape[0],
            **_cross_modal_kwargs(self, dict(decoder), _lookup(DTYPES, dtype, "dtype"), shared,
                                  self.image_tower.width))

    def __call__(self, batch, rng=None):
        embeddings, aux = self.encode_batch(batch, rng)
        outputs = self._contrastive_outputs(embeddings)
        outputs["caption_logits"] = self.decoder(aux["text"]["tokens"], aux["image"]["tokens"])
        return outputs

    # -- generation --------------------------------------------------------------------------
    def start_decoding(self, images: jax.Array, batch: int) -> dict:
        """What decoding keeps: the image tokens' cross-attention keys/values and empty caches.

        `batch` may exceed the number of images (beams): image rows are repeated to match.
        """
        _, image_aux = self.image_tower(images)
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
        _, image_aux = self.image_tower(images)
        _, text_aux = self.text_tower(tokens)
        logits = self.decoder(text_aux["tokens"], image_aux["tokens"])
        return jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)


class FusionModel(CLIP):
    """CLIP plus a bidirectional fusion encoder trained by image-text matching (with hard
    negatives mined from the in-batch similarities) and masked language modelling (ALBEF style).

    Its cross-attention memory is the tokens of every non-text tower (image, audio), each
    modality's with a learned modality embedding when there are several. `modality_dropout`:
    in training, that share of examples keeps one memory modality only (drawn evenly), so the
    encoder learns to match and fill in from either alone.
    """

    def __init__(self, *, fusion_encoder, vocab_size: int, dtype: str = "float32",
                 remat: str = "none", scan_layers: bool = False,
                 attention_implementation: str | None = None, mask_probability: float = 0.15,
                 mask_token_id: int | None = None, hard_negative_fraction: float = 1.0,
                 modality_dropout: float = 0.0, rngs: nnx.Rngs, **clip_kwargs):
        # [MASK] must be an id no text ever has: by default one past the tokenizer's ids (every
        # CLIP BPE id is a real token, and the words tokenizer gives UNK to unknown words).
        mask_token_id = vocab_size if mask_token_id is None else mask_token_id
        super().__init__(vocab_size=max(vocab_size, mask_token_id + 1), dtype=dtype,
                         remat=remat, scan_layers=scan_layers,
                         attention_implementation=attention_implementation, rngs=rngs,
                         **clip_kwargs)
        shared = dict(remat=remat, scan_layers=scan_layers, rngs=rngs,
                      attention_implementation=attention_implementation)
        self.memory_modalities = tuple(m for m in self.modalities if m != "text")
        widths = {m: getattr(self, f"{m}_tower").width for m in self.memory_modalities}
        if len(set(widths.values())) != 1:
            raise ValueError(f"The fusion encoder's memory holds every non-text tower's tokens, "
                             f"so their widths must agree; they are {widths}: give the towers "
                             "one width (config.model.<modality>_tower.variant or width).")
        memory_width = widths[self.memory_modalities[0]]
        # Only with several memory modalities: image-text checkpoints keep their parameters.
        self.modality_embedding = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (len(widths), memory_width)),
            logical_axes=(None, "embed")) if len(widths) > 1 else None
        self.modality_dropout = modality_dropout
        self.vocab_size = vocab_size  # the text ids MLM predicts and draws random tokens from
        self.fusion_encoder = fusion.FusionEncoder(
            vocab_size=self.vocab_size,
            **_cross_modal_kwargs(self, dict(fusion_encoder), _lookup(DTYPES, dtype, "dtype"),
                                  shared, memory_width))
        self.mask_probability, self.mask_token_id = mask_probability, mask_token_id
        # The share of ITM negatives mined from the similarities; the rest are drawn uniformly.
        self.hard_negative_fraction = hard_negative_fraction

    def text_lengths(self, tokens):
        return (tokens != self.text_tower.pad_id).sum(axis=1).astype(jnp.int32)

    def memory(self, aux: dict, rng: jax.Array | None = None):
        """(memory, each example's count of real memory tokens or None) from the towers' aux;
        modality dropout only with `rng` (training)."""
        return fusion.modality_memory(
            [aux[m]["tokens"] for m in self.memory_modalities],
            None if self.modality_embedding is None else self.modality_embedding[...],
            self.modality_dropout if rng is not None else 0.0, rng)

    def memory_embedding(self, embeddings: dict) -> jax.Array:
        """The memory modalities' normalised embeddings, averaged: what a text is compared with
        to find hard negatives."""
        return sum(losses.l2_normalize(embeddings[m]) for m in self.memory_modalities) / len(
            self.memory_modalities)

    def fuse(self, batch: dict, tokens: jax.Array | None = None) -> jax.Array:
        """Fused text states of the batch's media with `tokens` (default: its own)."""
        tokens = batch["tokens"] if tokens is None else tokens
        aux = {m: getattr(self, f"{m}_tower")(batch[conventions.BATCH_KEYS[m]])[1]
               for m in self.memory_modalities}
        memory, lengths = self.memory(aux)
        _, text_aux = self.text_tower(tokens)
        return self.fusion_encoder(text_aux["tokens"], memory, self.text_lengths(tokens), lengths)

    def match_logits(self, batch: dict, tokens: jax.Array | None = None) -> jax.Array:
        """[batch, 2] matching logits of each example's media with `tokens` (default: its own)."""
        return self.fusion_encoder.match_logits(self.fuse(batch, tokens))

    def __call__(self, batch, rng=None):
        if rng is None:
            raise ValueError("The fusion model draws negatives and masks: pass an rng key.")
        embeddings, aux = self.encode_batch(batch, rng)
        outputs = self._contrastive_outputs(embeddings)
        text_aux, tokens = aux["text"], batch["tokens"]
        negatives_rng, mask_rng = jax.random.split(rng)
        memory, memory_lengths = self.memory(aux, jax.random.fold_in(rng, 1))
        text_states = text_aux["tokens"]
        lengths = self.text_lengths(tokens)

        # Matching: each positive pair, each memory (image, sounds) with a hard negative text
        # and each text with a hard negative memory, drawn in proportion to exp(similarity)
        # among the examples whose caption differs (an identical caption is not a negative).
        similarity = jax.lax.stop_gradient(
            self.memory_embedding(embeddings) @ losses.l2_normalize(embeddings["text"]).T)
        same_caption = losses.same_caption(tokens)
        text_rng, memory_negative_rng = jax.random.split(negatives_rng)
        negative_text = fusion.sample_hard_negatives(
            text_rng, similarity, same_caption, outputs["logit_scale"],
            self.hard_negative_fraction)
        negative_memory = fusion.sample_hard_negatives(
            memory_negative_rng, similarity.T, same_caption, outputs["logit_scale"],
            self.hard_negative_fraction)
        memory_lengths_of = (None if memory_lengths is None else
                             jnp.concatenate([memory_lengths, memory_lengths,
                                              memory_lengths[negative_memory]]))
        fused = self.fusion_encoder(
            jnp.concatenate([text_states, text_states[negative_text], text_states]),
            jnp.concatenate([memory, memory, memory[negative_memory]]),
            jnp.concatenate([lengths, lengths[negative_text], lengths]), memory_lengths_of)
        batch_size = tokens.shape[0]
        outputs["itm_logits"] = self.fusion_encoder.match_logits(fused)
        outputs["itm_labels"] = jnp.concatenate(
            [jnp.ones((batch_size,), jnp.int32), jnp.zeros((2 * batch_size,), jnp.int32)])

        # Masked language modelling over the fused states of the masked text.
        masked_tokens, mlm_mask = fusion.mask_tokens(
            mask_rng, tokens, self.vocab_size, self.mask_probability, mask_id=self.mask_token_id,
            pad_id=self.text_tower.pad_id, eot_id=self.text_tower.eot_id)
        _, masked_aux = self.text_tower(masked_tokens)
        fused_masked = self.fusion_encoder(masked_aux["tokens"], memory, lengths, memory_lengths)
        outputs["mlm_logits"] = self.fusion_encoder.token_logits(fused_masked)
        outputs["mlm_mask"] = mlm_mask
        return outputs


class FusionClassifier(FusionModel):
    """A classification head over the fusion encoder's first state: answers to questions about
    an image (VQA-style), or any label that needs the media and text together. Fine-tuned from
    a fusion model's checkpoint through config.init_from."""

    def __init__(self, *, num_classes: int, dtype: str = "float32", rngs: nnx.Rngs, **kwargs):
        super().__init__(dtype=dtype, rngs=rngs, **kwargs)
        self.classifier = layers.Dense(self.text_tower.width, num_classes, ("embed", None),
                                       rngs=rngs, dtype=_lookup(DTYPES, dtype, "dtype"))

    def classify(self, batch: dict) -> jax.Array:
        return self.classifier(self.fuse(batch)[:, 0]).astype(jnp.float32)

    def __call__(self, batch, rng=None):
        del rng
        return {"class_logits": self.classify(batch)}


MODELS = {"clip": CLIP, "coca": CoCa, "fusion": FusionModel,
          "fusion_classifier": FusionClassifier, "image_tokenizer": ImageTokenizer,
          "text_to_image": TextToImage}


def build_model(config, tokenizer, *, seed: int | None = None) -> nnx.Module:
    """Builds the model `config.model` names for a run's config and tokenizer; parameters come
    from `seed` (default config.seed). The text tower's context length and pad / end-of-text ids
    are the tokenizer's unless config.model.text_tower sets them; uint8 images are normalised on
    the device with config.data.normalization."""
    kwargs = dict(config.model)
    model_cls = _lookup(MODELS, kwargs.pop("name"), "model")
    # A fixed model vocabulary (an imported model's, or a benchmark's) overrides the tokenizer's.
    vocab_size = kwargs.pop("vocab_size", None) or tokenizer.vocab_size
    if kwargs.get("text_tower"):
        kwargs["text_tower"] = dict(text_tower_ids(tokenizer), **dict(kwargs["text_tower"]))
    normalization = config.data.get("normalization", "minus_one_one")
    image_normalization(normalization)  # an unknown name fails here, before compiling
    model = model_cls(vocab_size=vocab_size, image_size=config.data.image_size,
                      spectrogram_shape=(spectrogram_shape(config) if kwargs.get("audio_tower")
                                         else None),
                      rngs=nnx.Rngs(config.seed if seed is None else seed), **kwargs)
    if "image" in model.modalities:
        model.image_tower.input_normalization = normalization
    return model


def example_inputs(config, context_length: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """(shape, dtype) of one example's entry for each of the model's towers, as the input
    pipeline gives them: uint8 images, bfloat16 spectrograms, int32 token rows."""
    size = config.data.image_size
    inputs = {"image": ((size, size, 3), jnp.uint8),
              "audio": (spectrogram_shape(config), jnp.bfloat16),
              "text": ((context_length,), jnp.int32)}
    return {conventions.BATCH_KEYS[m]: inputs[m]
            for m in conventions.model_modalities(config.model)}


def spectrogram_shape(config) -> tuple[int, int]:
    """(frames, mel bins) of the pipeline's spectrograms: what the audio tower takes."""
    return int(config.data.audio.frames), int(config.data.audio.num_mels)


def text_tower_ids(tokenizer) -> dict[str, int]:
    """What the text tower takes from the tokenizer when its config leaves it unset."""
    return {"context_length": tokenizer.context_length, "pad_id": tokenizer.pad_id,
            "eot_id": tokenizer.eot_id}


def pretrained_sources(config) -> list[tuple[str, str | None, tuple[str, ...], tuple[str, ...]]]:
    """(config field, workdir, parameter prefixes (none: all), settings that must equal the
    workdir's config) of each run a new run starts parameters from: config.init_from, then what
    the model declares (a text-to-image model's tokenizer); a declared workdir may be unset."""
    init_from = config.init_from.get("checkpoint")
    declared = getattr(MODELS.get(config.model.name), "pretrained_parts", None)
    return ([("config.init_from.checkpoint", init_from,
              tuple(config.init_from.get("params", ())), ())] if init_from else []) + (
        declared(config) if declared else [])
