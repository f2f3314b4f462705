"""Text-to-image (text-to-image's second stage): a frozen image tokenizer, a text tower, and a
masked-token
generator over the tokenizer's tokens that cross-attends to the text's token states.

The model *is* the tokenizer with two parts added, so its tokenizer parameters keep their names
and load from a finished tokenizer run (`config.image_tokenizer.workdir`, declared here through
`pretrained_parts`; the config freezes them). Training tokenizes each image, drops the caption for
a share of examples (the generator's learned null context takes its place), masks a cosine-drawn
share of the tokens and predicts them (the `masked_image_tokens` loss; the autoregressive mode
predicts every token from those before it). `generate` decodes tokens with classifier-free
guidance (in parallel steps, or one at a time: image_generator) and turns them into images with
the tokenizer's decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.image_generator import (
    AutoregressiveTokenGenerator,
    MaskedTokenGenerator,
)
from mmjax.models.image_tokenizer import PIXEL_HEAD_DEFAULTS, ImageTokenizer
from mmjax.models.towers import text_tower as text_tower_lib

# The tokenizer's top-level parameters: what a tokenizer run's checkpoint gives this model.
TOKENIZER_PARTS = ("image_tower", "to_latent", "from_latent", "decoder_position", "decoder",
                   "to_pixels")
# config.model.generator.mode: how image tokens are generated.
GENERATORS = {"masked": MaskedTokenGenerator, "autoregressive": AutoregressiveTokenGenerator}


def generator_tokens_per_step(generator, tokens_per_patch: int) -> int:
    """config.model.generator's tokens_per_step; unset, a patch's tokens for the autoregressive
    generator (a patch a step) and 1 for the masked one."""
    tokens_per_step = generator.get("tokens_per_step")
    if tokens_per_step is not None:
        return tokens_per_step
    return tokens_per_patch if generator.get("mode", "masked") == "autoregressive" else 1


class TextToImage(ImageTokenizer):
    """ImageTokenizer + text_tower + generator. Built as config.model.name='text_to_image' from
    the tokenizer's fields (image_tower, image_decoder, fsq_levels), config.model.text_tower and
    config.model.generator (a text-tower variant and/or width, depth, num_heads, mlp_dim, and
    its mode: "masked", MaskGIT's parallel decoding, or "autoregressive", raster order,
    tokens_per_step tokens a step: by default a patch's)."""

    modalities = ("image", "text")

    def __init__(self, *, vocab_size: int, text_tower: dict, generator: dict,
                 condition_dropout: float = 0.1, dtype: str = "float32", remat: str = "none",
                 scan_layers: bool = False, attention_implementation: str | None = None,
                 rngs: nnx.Rngs, **tokenizer_kwargs):
        shared = dict(remat=remat, scan_layers=scan_layers,
                      attention_implementation=attention_implementation, rngs=rngs)
        super().__init__(dtype=dtype, **shared, **tokenizer_kwargs)
        compute_dtype = jnp.dtype(dtype)
        text = {k: v for k, v in dict(text_tower).items() if k != "name"}
        self.text_tower = text_tower_lib.TextTransformer(vocab_size=vocab_size, **text,
                                                         dtype=compute_dtype, **shared)
        generator = dict(generator)
        tokens_per_step = generator_tokens_per_step(generator, self.tokens_per_patch)
        generator.pop("tokens_per_step", None)
        mode = generator.pop("mode", "masked")
        if mode not in GENERATORS:
            raise ValueError(f"Unknown generator mode {mode!r} (config.model.generator.mode); "
                             f"valid: {sorted(GENERATORS)}.")
        shape = text_tower_lib.tower_shape(**generator)
        self.generator = GENERATORS[mode](
            codebook_size=self.codebook_size, num_tokens=self.num_tokens,
            context_length=self.text_tower.context_length, context_width=self.text_tower.width,
            tokens_per_step=tokens_per_step, dtype=compute_dtype, **shape, **shared)
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout {condition_dropout} must be in [0, 1): the share "
                             "of training captions replaced by the null context.")
        self.condition_dropout = condition_dropout

    @staticmethod
    def pretrained_parts(config) -> list[tuple[str, str | None, tuple[str, ...], tuple]]:
        """(config field, workdir, parameter prefixes, settings that must equal the workdir's)
        of what this model starts from: the tokenizer, whose codes mean nothing under other FSQ
        levels or pixel normalisation, and whose encoder and decoder must be built as they were
        trained (a decoder with fewer blocks would load without the rest)."""
        workdir = config.get("image_tokenizer", {}).get("workdir")
        # A decoder field a tokenizer run lacks compares as the default the model builds.
        decoder = ("model.image_decoder", PIXEL_HEAD_DEFAULTS)
        return [("config.image_tokenizer.workdir", workdir, TOKENIZER_PARTS,
                 ("model.fsq_levels", ("model.tokens_per_patch", 1), "data.image_size",
                  "data.normalization",
                  "model.image_tower", decoder))]

    def text_context(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The text tower's token states and each text's count of real tokens."""
        _, aux = self.text_tower(tokens)
        return aux["tokens"], (tokens != self.text_tower.pad_id).sum(axis=1).astype(jnp.int32)

    def encode_batch(self, batch: dict, rng: jax.Array | None = None) -> tuple[dict, dict]:
        """The tokenizer's pooled image features and the text tower's pooled text, as the
        evaluation reads every model's modalities."""
        embeddings, aux = super().encode_batch(batch, rng)
        text, aux["text"] = self.text_tower(batch["tokens"])
        return {**embeddings, "text": text.astype(jnp.float32)}, aux

    def __call__(self, batch: dict, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        if rng is None:
            raise ValueError("The text-to-image model draws masks and dropped captions: pass an "
                             "rng key.")
        image_tokens = jax.lax.stop_gradient(self.tokenize(batch["image"]))
        context, lengths = self.text_context(batch["tokens"])
        drop_rng, mask_rng = jax.random.split(rng)
        dropped = jax.random.uniform(drop_rng, lengths.shape) < self.condition_dropout
        context, lengths = self.generator.condition(context, lengths, dropped)
        logits, counted = self.generator.training_outputs(mask_rng, image_tokens, context,
                                                          lengths)
        return {"image_token_logits": logits, "image_token_targets": image_tokens,
                "image_token_mask": counted}

    def generate_tokens(self, tokens: jax.Array, rng: jax.Array, **decoding) -> jax.Array:
        """Image tokens [batch, num_tokens] for each text (token rows), decoded as
        MaskedTokenGenerator.generate does (steps, guidance_scale, temperature)."""
        context, lengths = self.text_context(tokens)
        return self.generator.generate(context, lengths, rng, **decoding)

    def generate(self, tokens: jax.Array, rng: jax.Array, **decoding) -> jax.Array:
        """Images [batch, H, W, 3], normalised as the tokenizer's inputs are."""
        return self.detokenize(self.generate_tokens(tokens, rng, **decoding))

    def generate_candidates(self, tokens: jax.Array, rng: jax.Array, candidates: int = 1,
                            **decoding) -> jax.Array:
        """Images [batch, candidates, H, W, 3]: `candidates` drawn for each text in one batch
        of texts repeated (with one candidate, exactly `generate`'s images)."""
        images = self.generate(jnp.repeat(tokens, candidates, axis=0), rng, **decoding)
        return images.reshape(tokens.shape[0], candidates, *images.shape[1:])


def generation_outputs(model: TextToImage, batch: dict, settings) -> dict[str, jax.Array]:
    """On the device, per eval example: its real image, the tokenizer's reconstruction of it,
    and config.generation.candidates images generated from its caption at each of the run's
    guidance scales (uint8 [batch, candidates, H, W, 3]), all from one seed
    (config.generation.seed) so that a scale's images differ only by it."""
    generation = settings.generation
    outputs = {"real_images": batch["image"].astype(jnp.uint8),
               "reconstructed_images": model.as_uint8(model.detokenize(model.tokenize(
                   batch["image"])))}
    rng = jax.random.key(generation["seed"])
    for scale in generation["guidance_scales"]:
        outputs[f"generated_images@{scale:g}"] = model.as_uint8(model.generate_candidates(
            batch["tokens"], rng, int(generation.get("candidates", 1)),
            steps=generation["steps"], guidance_scale=scale,
            temperature=generation["temperature"]))
    return outputs
