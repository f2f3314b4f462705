"""Helpers the configs share (big_vision style): one change applied to any base."""

import os

import ml_collections

from mmjax.models import text_to_image


def as_coca(config, decoder_depth: int):
    """A CLIP config made CoCa: a multimodal decoder over the text tower, captioning loss."""
    config.model.name = "coca"
    # The multimodal decoder: its width and heads are the text tower's; depth is its own.
    config.model.decoder = ml_collections.ConfigDict(dict(depth=decoder_depth))
    # CoCa weights captioning twice as much as the contrastive loss.
    config.losses = {"clip": 1.0, "caption": 2.0}
    config.evals = ("retrieval", "zeroshot", "captioning")
    return config


# CLIP's BPE merges file (open_clip's bpe_simple_vocab_16e6.txt.gz, shipped with the tests).
CLIP_BPE_VOCABULARY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "tests", "fixtures", "bpe_simple_vocab_16e6.txt.gz")


def as_open_clip_architecture(config, context_length: int = 77):
    """OpenAI CLIP's architecture exactly, as open_clip and transformers build it: exact GELU,
    LayerNorm epsilon 1e-5, no patch bias, a position for the class token, key biases, a layer
    norm before the image blocks, class-token pooling, and CLIP's BPE tokenizer (end-of-text the
    last id). Such a run exports to both with mmjax.tools.weights.export_open_clip / export_hf."""
    exact = dict(activation="gelu_exact", norm_epsilon=1e-5, key_bias=True)
    config.model.image_tower.update(pooling="cls", patch_bias=False, class_position=True,
                                    pre_norm=True, **exact)
    config.model.text_tower.update(causal=True, **exact)
    config.tokenizer = ml_collections.ConfigDict(dict(
        name="clip_bpe", context_length=context_length, vocabulary_file=CLIP_BPE_VOCABULARY))
    config.model.vocab_size = None  # the tokenizer's 49,408
    return config


def with_benchmark_evals(config, every_steps: int = 5_000, probe_examples: int = 10_000):
    """The evaluations CLIP papers report, each its own eval set: ImageNet-1k zero-shot (OpenAI's
    names and 80 templates) and linear probe, COCO 5k retrieval (Karpathy test split, five
    captions per image). Needs tfds `imagenet2012` and `coco_captions` prepared under
    config.data.tfds_data_dir (or their stand-ins: python -m input_pipeline.generated.standins)."""
    config.eval_sets.imagenet = ml_collections.ConfigDict(dict(
        data="tfds:imagenet2012:validation", evals=("zeroshot", "linear_probe"),
        probe_train="tfds:imagenet2012:train", probe_examples=probe_examples,
        every_steps=every_steps))
    config.eval_sets.coco = ml_collections.ConfigDict(dict(
        data="tfds:coco_captions:test", evals=("retrieval",), captions_per_image=5,
        every_steps=every_steps))
    return config


def as_image_tokenizer(config, encoder: str, decoder: str, levels: tuple[int, ...]):
    """Any config made an image tokenizer (text-to-image's first stage): a ViT autoencoder whose
    patch latents are FSQ-quantised (`levels` per channel: prod(levels) codes), trained to
    reconstruct its images; no text tower. `encoder` and `decoder` are ViT variants (SIZE/PATCH;
    the decoder's patch size is the encoder's)."""
    config.model.name = "image_tokenizer"
    config.model.image_tower.update(variant=encoder, pooling="gap")
    config.model.text_tower = None
    # pixel_channels: 0, a linear patch head; C, C features per pixel and two 3x3 convolutions
    # (sharper small shapes, slower), with pixel_blocks residual ones between.
    config.model.image_decoder = ml_collections.ConfigDict(dict(variant=decoder,
                                                                pixel_channels=0,
                                                                pixel_blocks=0))
    config.model.fsq_levels = tuple(levels)
    # FSQ codes (tokens) per patch: each adds len(levels) latent channels and a token to the
    # sequence a generator models, not a larger codebook it predicts over.
    config.model.tokens_per_patch = 1
    config.losses = {"reconstruction": 1.0}
    # Each pixel's squared error weighted 1 + edge_weight * (its distance from its 3x3
    # neighbourhood's mean): 0 is the plain mean (mmjax/losses/reconstruction.py).
    config.reconstruction = ml_collections.ConfigDict(dict(edge_weight=0.0, noise_floor=0.0))
    config.evals = ("reconstruction",)
    # Flips and crops would only teach the autoencoder what it already sees.
    config.data.train_preprocess = "decode|resize"
    config.data.eval_preprocess = "decode|resize"
    # A reconstruction loss has no use for weight decay on a small model, nor for 8k warmup.
    config.optimizer.weight_decay = 0.0
    return config


def as_text_to_image(tokenizer_config, generator: str, condition_dropout: float = 0.1):
    """An image tokenizer's config made a text-to-image model over its tokens (text-to-image's
    second stage): the same tokenizer fields, loaded frozen from a run of that config
    (`--config.image_tokenizer.workdir=DIR`), with the text tower kept and a masked-token
    generator (`generator`: a text-tower variant) that cross-attends to it, trained on masked
    image tokens with a share of captions dropped for classifier-free guidance."""

    config = tokenizer_config
    config.model.name = "text_to_image"
    config.model.text_tower = ml_collections.ConfigDict(dict(name="transformer", variant="mu"))
    # mode "autoregressive": raster order, tokens_per_step tokens a decoding step (smoke_t2i's;
    # unset: the tokenizer's tokens_per_patch, a patch a step).
    config.model.generator = ml_collections.ConfigDict(dict(
        variant=generator, mode="masked",
        tokens_per_step=ml_collections.config_dict.placeholder(int)))
    config.model.condition_dropout = condition_dropout
    config.image_tokenizer = ml_collections.ConfigDict(dict(
        workdir=ml_collections.config_dict.placeholder(str)))
    config.frozen_params = text_to_image.TOKENIZER_PARTS
    config.optimizer.weight_decay = 0.05  # the generator's; frozen parts are left as loaded
    config.losses = {"masked_image_tokens": 1.0}
    # Parallel decoding (MaskGIT's 8 to 12 steps; sampling at temperature 0.5 drew cleaner
    # smoke images than 1); the eval samples every scale of the curve, 0 being the
    # unconditional model; --mode=generate and inference use guidance_scale.
    config.generation.update(steps=12, temperature=0.5, guidance_scale=3.0,
                             guidance_scales=(0.0, 1.0, 2.0, 3.0, 4.0))
    # config.judge.workdir: the judge of the generated images (mmjax/evaluation/judge.py: an
    # attribute classifier and a CLIP of another seed, by mmjax.tools.fit_judge), which the
    # generation evaluator needs.
    config.evals = ("generation",)
    return config
