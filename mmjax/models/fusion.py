"""CLIP with a bidirectional fusion encoder (ALBEF style): image-text matching with hard
negatives and masked language modelling, and a classifier over the fused states (VQA-style)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import conventions
from mmjax.losses import contrastive
from mmjax.models import cross_attention, layers
from mmjax.models.clip import CLIP, DTYPES, cross_modal_kwargs, lookup


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
        self.fusion_encoder = cross_attention.FusionEncoder(
            vocab_size=self.vocab_size,
            **cross_modal_kwargs(self, dict(fusion_encoder), lookup(DTYPES, dtype, "dtype"),
                                  shared, memory_width))
        self.mask_probability, self.mask_token_id = mask_probability, mask_token_id
        # The share of ITM negatives mined from the similarities; the rest are drawn uniformly.
        self.hard_negative_fraction = hard_negative_fraction

    def text_lengths(self, tokens):
        return (tokens != self.text_tower.pad_id).sum(axis=1).astype(jnp.int32)

    def memory(self, aux: dict, rng: jax.Array | None = None):
        """(memory, each example's count of real memory tokens or None) from the towers' aux;
        modality dropout only with `rng` (training)."""
        return cross_attention.modality_memory(
            [aux[m]["tokens"] for m in self.memory_modalities],
            None if self.modality_embedding is None else self.modality_embedding[...],
            self.modality_dropout if rng is not None else 0.0, rng)

    def memory_embedding(self, embeddings: dict) -> jax.Array:
        """The memory modalities' normalised embeddings, averaged: what a text is compared with
        to find hard negatives."""
        return sum(contrastive.l2_normalize(embeddings[m]) for m in self.memory_modalities) / len(
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
            self.memory_embedding(embeddings) @ contrastive.l2_normalize(embeddings["text"]).T)
        same_caption = contrastive.same_caption(tokens)
        text_rng, memory_negative_rng = jax.random.split(negatives_rng)
        negative_text = cross_attention.sample_hard_negatives(
            text_rng, similarity, same_caption, outputs["logit_scale"],
            self.hard_negative_fraction)
        negative_memory = cross_attention.sample_hard_negatives(
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
        masked_tokens, mlm_mask = cross_attention.mask_tokens(
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
                                       rngs=rngs, dtype=lookup(DTYPES, dtype, "dtype"))

    def classify(self, batch: dict) -> jax.Array:
        return self.classifier(self.fuse(batch)[:, 0]).astype(jnp.float32)

    def __call__(self, batch, rng=None):
        del rng
        return {"class_logits": self.classify(batch)}
