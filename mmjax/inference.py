"""Embeddings from a trained (or imported) checkpoint, like open_clip's encode_image / encode_text.

    from mmjax import inference
    model = inference.load("workdir/smoke")            # a workdir, or its checkpoints/STEP folder
    image_embeddings = model.encode_image(images)      # uint8 (N, H, W, 3) of any size, or float32
    text_embeddings = model.encode_text(["two large red circles on the left"])
    audio_embeddings = model.encode_audio(spectrograms)  # audio models: log-mel [N, frames, mels]
    video_embeddings = model.encode_video(frames)      # video models: uint8 [N, T, H, W, 3]
    captions = model.caption(images, beam_size=3)     # captioning models (CoCa)
    tokens = model.tokenize(images)                   # image tokenizers: [N, tokens] ints
    reconstructions = model.detokenize(tokens)        # ... and back: uint8 (N, S, S, 3)
    images = model.generate(["two large red circles on the left"], seed=0,
                            guidance_scale=2.0, steps=8)  # text-to-image: uint8 (N, S, S, 3)
    images = model.generate(texts, candidates=4)   # ... the best of 4 by config's rerank_with

Embeddings are the projected, unnormalised vectors (normalise before taking cosines). Needs no
TensorFlow.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mmjax import conventions, defaults, models, paths, text_tokenizers
from mmjax.evaluation import metrics
from mmjax.models import decoding
from mmjax.training import checkpoint


def preprocess_images(images: np.ndarray, image_size: int,
                      normalization: str = "minus_one_one") -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, S, S, 3], normalised: the eval preprocessing.

    Bilinear, antialiased resizing (jax.image.resize); the tf.data pipeline uses TensorFlow's
    resize, which agrees to about 1e-2 in pixel values where sizes differ.
    """
    images = jnp.asarray(images, jnp.float32)
    if images.shape[1:3] != (image_size, image_size):
        images = jax.image.resize(images, (images.shape[0], image_size, image_size, 3),
                                  method="bilinear", antialias=True)
    mean, std = conventions.image_normalization(normalization)
    return np.asarray((images - jnp.asarray(mean)) / jnp.asarray(std))


class InferenceModel:
    def __init__(self, config, params, graphdef, tokenizer):
        self.config = config
        self.params = params
        self.graphdef = graphdef
        self.tokenizer = tokenizer
        self.image_size = config.data.image_size

    @functools.cached_property
    def _encode_image(self):
        return jax.jit(lambda params, x: nnx.merge(self.graphdef, params).encode_image(x)[0])

    @functools.cached_property
    def _encode_audio(self):
        return jax.jit(lambda params, x: nnx.merge(self.graphdef, params).encode("audio", x)[0])

    def encode_audio(self, spectrograms) -> np.ndarray:
        """Log-mel spectrograms [N, frames, mels] as the input pipeline makes them
        (input_pipeline/audio.py, config.data.audio), for a model with an audio tower."""
        spectrograms = np.asarray(spectrograms, np.float32)
        expected = models.ModelInputs.from_data(self.config.data).spectrogram_shape
        if spectrograms.ndim != 3 or spectrograms.shape[1:] != expected:
            raise ValueError(f"Spectrograms must be (N, {expected[0]}, {expected[1]}) "
                             f"(frames, mel bins: config.data.audio); got {spectrograms.shape}.")
        return np.asarray(self._encode_audio(self.params, jnp.asarray(spectrograms)))

    @functools.cached_property
    def _encode_video(self):
        return jax.jit(lambda params, x: nnx.merge(self.graphdef, params).encode("video", x)[0])

    def encode_video(self, frames) -> np.ndarray:
        """Clips uint8 [N, T, H, W, 3] of the model's frame count (config.data.video.frames,
        already sampled at its stride); each frame gets the eval preprocessing, as images do.
        float32 clips are taken as preprocessed."""
        clips = self._prepare_clips(frames)
        return np.asarray(self._encode_video(self.params, jnp.asarray(clips)))

    def _prepare_clips(self, frames) -> np.ndarray:
        frames = np.asarray(frames)
        count = models.ModelInputs.from_data(self.config.data).video_frames
        if frames.ndim != 5 or frames.shape[1] != count or frames.shape[-1] != 3:
            raise ValueError(f"Clips must be (N, {count}, H, W, 3) (config.data.video.frames "
                             f"frames each); got shape {frames.shape}.")
        images = self._prepare_images(frames.reshape(-1, *frames.shape[2:]))
        return images.reshape(len(frames), count, *images.shape[1:])

    @functools.cached_property
    def _encode_text(self):
        return jax.jit(lambda params, t: nnx.merge(self.graphdef, params).encode_text(t)[0])

    def encode_image(self, images) -> np.ndarray:
        """uint8 images get the eval preprocessing; float32 images are taken as preprocessed."""
        images = self._prepare_images(images)
        return np.asarray(self._encode_image(self.params, jnp.asarray(images, jnp.float32)))

    def _prepare_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Images must be (N, H, W, 3); got shape {images.shape}.")
        if images.dtype == np.uint8:
            images = preprocess_images(images, self.image_size,
                                       self.config.data.get("normalization", "minus_one_one"))
        elif images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"Preprocessed float images must be {self.image_size}x"
                             f"{self.image_size}; got {images.shape[1:3]}. Pass uint8 images "
                             "to have them resized.")
        return images.astype(np.float32)

    def encode_text(self, texts: Sequence[str] | np.ndarray) -> np.ndarray:
        """A list of strings is tokenised with the model's tokenizer; integers are token ids."""
        if isinstance(texts, np.ndarray) and np.issubdtype(texts.dtype, np.integer):
            tokens = texts.astype(np.int32)
        else:
            tokens = self.tokenizer(list(texts))
        return np.asarray(self._encode_text(self.params, jnp.asarray(tokens)))

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _caption(self, params, images, beam_size):
        return decoding.caption(nnx.merge(self.graphdef, params), images, self.tokenizer,
                                beam_size)

    def caption(self, images, beam_size: int = 1) -> list[str]:
        """Captions (greedy, or beam search with `beam_size` > 1) for a captioning model: of
        images, or of clips [N, T, H, W, 3] for a model that captions video."""
        model = nnx.merge(self.graphdef, self.params)
        if not hasattr(model, "start_decoding"):
            raise ValueError(f"This is a {self.config.model.name!r} model, which has no text "
                             "decoder; captions need a 'coca' model.")
        images = (self._prepare_clips(images) if model.captioned == "video"
                  else self._prepare_images(images))
        tokens = np.asarray(self._caption(self.params, jnp.asarray(images), beam_size))
        return [self.tokenizer.decode(row) for row in tokens]

    # -- image tokenizers and text-to-image ----------------------------------------------------
    def _model_that_can(self, method: str, what: str, kind: str):
        """The merged model, refused (once: callers cache what they build) if it lacks `method`."""
        model = nnx.merge(self.graphdef, self.params)
        if not hasattr(model, method):
            raise ValueError(f"This is a {self.config.model.name!r} model, which {what}; that "
                             f"needs a {kind!r} model.")
        return model

    @functools.cached_property
    def _image_tokenizer(self):
        """(tokenize, detokenize) compiled, for models with image tokens."""
        self._model_that_can("tokenize", "has no image tokens", "image_tokenizer")
        def detokenize(params, tokens):
            model = nnx.merge(self.graphdef, params)
            return model.as_uint8(model.detokenize(tokens))
        return (jax.jit(lambda params, x: nnx.merge(self.graphdef, params).tokenize(x)),
                jax.jit(detokenize))

    def tokenize(self, images) -> np.ndarray:
        """An image tokenizer's integer tokens [N, tokens] (row by row over the patch grid, a
        patch's config.model.tokens_per_patch adjacent);
        uint8 images get the eval preprocessing."""
        tokenize, _ = self._image_tokenizer
        return np.asarray(tokenize(self.params, jnp.asarray(self._prepare_images(images))))

    def detokenize(self, tokens) -> np.ndarray:
        """Tokens [N, tokens] -> uint8 images [N, image_size, image_size, 3]."""
        _, detokenize = self._image_tokenizer
        return np.asarray(detokenize(self.params, jnp.asarray(tokens, jnp.int32)))

    @functools.cached_property
    def _generate(self):
        self._model_that_can("generate", "cannot make images from text", "text_to_image")

        @functools.partial(jax.jit, static_argnames=("steps", "candidates"))
        def generate(params, tokens, rng, guidance_scale, temperature, steps, candidates):
            model = nnx.merge(self.graphdef, params)
            return model.as_uint8(model.generate_candidates(
                tokens, rng, candidates, steps=steps, guidance_scale=guidance_scale,
                temperature=temperature))
        return generate

    def generate(self, texts: Sequence[str], seed: int = 0, guidance_scale: float | None = None,
                 steps: int | None = None, temperature: float | None = None,
                 candidates: int | None = None) -> np.ndarray:
        """uint8 images (N, S, S, 3) made from `texts`; the same seed gives the same images.
        Unset settings are the run's config.generation (guidance 1: no guidance, 0: ignore the
        text; more than one candidate a text: the one its rerank_with run finds closest)."""
        run = self.config.generation
        candidates = int(run.get("candidates", 1) if candidates is None else candidates)
        if candidates > 1 and not run.get("rerank_with"):
            raise ValueError(f"{candidates} candidates a text need a contrastive run to choose "
                             "by: set config.generation.rerank_with, or pass candidates=1.")
        drawn = np.asarray(self._generate(
            self.params, jnp.asarray(self.tokenizer(list(texts))), jax.random.key(seed),
            jnp.float32(run.guidance_scale if guidance_scale is None else guidance_scale),
            jnp.float32(run.temperature if temperature is None else temperature),
            steps=int(run.steps if steps is None else steps), candidates=candidates))
        return keep_one(drawn, texts, run.get("rerank_with"))


def load_config(path: str) -> ml_collections.ConfigDict:
    """The config a workdir (or one of its checkpoints/STEP folders) was trained with, its
    vocabulary pointing at the workdir's own copy."""
    directory, _ = checkpoint.find_checkpoint(path)
    workdir = paths.dirname(directory)
    config_path = paths.join(workdir, "config.json")
    if not paths.exists(config_path):
        raise FileNotFoundError(f"{config_path} is missing: a trained model is loaded with the "
                                "run's config snapshot next to its checkpoints/ folder.")
    config = ml_collections.ConfigDict(defaults.fill_missing(json.loads(
        paths.read_text(config_path))))
    vocabulary_copy = paths.join(workdir, "vocabulary.txt")
    if config.tokenizer.get("vocabulary_file") and paths.exists(vocabulary_copy):
        config.tokenizer.vocabulary_file = (
            vocabulary_copy  # the workdir travels with its vocabulary
        )
    return config


def load(path: str) -> InferenceModel:
    """Loads a workdir's (or a checkpoints/STEP folder's) parameters with the run's config."""
    config = load_config(path)
    tokenizer = text_tokenizers.build_tokenizer(config.tokenizer)
    model = models.build_model(config.model, models.ModelInputs.from_data(config.data),
                               tokenizer, seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    params = checkpoint.merge_params(params, checkpoint.load_params(path), (), path)
    return InferenceModel(config, params, graphdef, tokenizer)


# Best of N for text-to-image: draw `config.generation.candidates` images a caption and keep the
# one a contrastive run (`config.generation.rerank_with`) finds closest to it, as DALL-E chose by
# CLIP's score. The preflight refuses the judge's own CLIP as the chooser.

# The models (config.model.name) that embed images and texts in one space (trained with the
# clip or siglip loss), so that their cosines can choose.
CONTRASTIVE_MODELS = ("clip", "coca")


@functools.lru_cache(maxsize=2)
def load_reranker(workdir: str):
    """The chooser: an mmjax.inference.InferenceModel of a contrastive run."""
    try:
        return load(workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"config.generation.rerank_with ({workdir}, read from {paths.absolute('.')}): {e} "
            "Or draw one image a caption (candidates=1), which needs no chooser.") from e


def best_of(reranker, candidates: np.ndarray, captions: Sequence[str],
            text_embeddings: np.ndarray | None = None):
    """(uint8 [N, H, W, 3]: for each caption the candidate [N, K, H, W, 3] whose image embedding
    has the highest cosine with the caption's, and those cosines [N, K]). `text_embeddings`:
    the reranker's of `captions`, when the caller already has them."""
    count, per_caption = candidates.shape[:2]
    if text_embeddings is None:
        text_embeddings = reranker.encode_text(list(captions))
    images = metrics.l2_normalize(reranker.encode_image(
        candidates.reshape(count * per_caption, *candidates.shape[2:])))
    scores = np.einsum("nkd,nd->nk", images.reshape(count, per_caption, -1),
                       metrics.l2_normalize(text_embeddings))
    return candidates[np.arange(count), scores.argmax(axis=1)], scores


def keep_one(candidates: np.ndarray, captions: Sequence[str], rerank_with: str | None):
    """uint8 [N, H, W, 3] from [N, K, H, W, 3]: the only candidate, or the best of K by the run
    at rerank_with."""
    if candidates.shape[1] == 1:
        return candidates[:, 0]
    return best_of(load_reranker(rerank_with), candidates, captions)[0]
