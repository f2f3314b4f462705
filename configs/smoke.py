"""CPU smoke run: a tiny CLIP on the embedded mmjax_shapes dataset, learning in minutes.

python main.py --config=configs/smoke.py --workdir=/tmp/mmjax_smoke
"""

import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # A label for logs and benchmark tables.
    config.name = "smoke"
    # Seeds the parameters and the data order; two runs with one seed log identical losses.
    config.seed = 0
    # Optimizer steps to train for.
    config.total_steps = 1200
    # Global batch size (over all devices and processes).
    config.batch_size = 128
    # Log train metrics and the progress line every this many steps.
    config.log_every_steps = 50
    # NaN/Inf loss or gradients: False stops the run naming the step; True skips such steps.
    config.skip_nonfinite_steps = False
    # Split each batch into this many micro-batches (less memory, same update: see Trainer).
    config.grad_accum_steps = 1
    # Evaluate on config.data.eval every this many steps (and always at the end); 0: only at the end.
    config.eval_every_steps = 500
    # Save a checkpoint every this many steps (and always at the end).
    config.checkpoint_every_steps = 500
    # Checkpoints kept in WORKDIR/checkpoints.
    config.keep_checkpoints = 2
    # Also keep, in WORKDIR/best, the checkpoint with the best value of this eval metric (for
    # example "eval/mmjax_shapes/i2t_recall@1"); None: do not.
    config.keep_best_by = ml_collections.config_dict.placeholder(str)
    # "max" or "min".
    config.keep_best_mode = "max"

    config.data = ml_collections.ConfigDict()
    # Dataset specs: 'tfds:NAME[:SPLIT]' (TFDS, never downloaded; the embedded mmjax_shapes is
    # generated locally on first use) or 'shards:DIR[:SPLIT]' (python -m input_pipeline.make_shards).
    config.data.train = "tfds:mmjax_shapes:train"
    config.data.eval = "tfds:mmjax_shapes:test"
    # Where TFDS datasets live; None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
    config.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)
    # Images are resized to image_size x image_size.
    config.data.image_size = 32
    # Pixel normalisation the model applies (on the device) to the pipeline's uint8 images:
    # "minus_one_one" or "clip" (OpenAI's mean and std).
    config.data.normalization = "minus_one_one"
    # Image preprocessing ops (input_pipeline/preprocess.py OPS), big_vision style; `size`
    # defaults to image_size. No flips or crops here: captions say "left", "right", how many.
    config.data.train_preprocess = "decode|resize"
    config.data.eval_preprocess = "decode|resize"
    # Bad examples (undecodable images, no caption) are skipped and counted (data/skipped); the
    # run stops, naming them, when more than this fraction of those read is bad.
    config.data.max_bad_fraction = 0.01
    # Captions per eval image for retrieval (5 for COCO / Flickr30k: any of an image's captions
    # counts); the first caption serves the other evaluators.
    config.data.eval_captions_per_image = 1
    # Global batch size for evaluation (the last batch is padded, never dropped).
    config.data.eval_batch_size = 250
    # The linear probe's labelled training images: the first probe_examples of probe_train
    # (None: config.data.train).
    config.data.probe_train = ml_collections.config_dict.placeholder(str)
    config.data.probe_examples = 2000

    config.tokenizer = ml_collections.ConfigDict()
    # 'words' (a vocabulary file), 'bytes' (no file), 'sentencepiece' (a .model file, e.g. from
    # python -m input_pipeline.make_vocab) or 'clip_bpe' (CLIP's bpe_simple_vocab_16e6.txt.gz).
    config.tokenizer.name = "words"
    # Tokens per text, including begin- and end-of-text; must equal the text tower's.
    config.tokenizer.context_length = 12
    config.tokenizer.vocabulary_file = os.path.join(REPO_ROOT, "input_pipeline",
                                                    "shapes_vocabulary.txt")

    config.model = ml_collections.ConfigDict()
    # A name in mmjax.models.MODELS.
    config.model.name = "clip"
    # Width of the shared image-text embedding.
    config.model.embed_dim = 64
    # Compute dtype ('float32', 'bfloat16'); parameters are always float32.
    config.model.dtype = "float32"
    # Rematerialisation policy for transformer blocks ('none', 'minimal', 'full', 'save_dots').
    config.model.remat = "none"
    # Run each tower's blocks under jax.lax.scan: compile time stays flat with depth.
    config.model.scan_layers = False
    # Attention kernel: "xla" everywhere, "cudnn" for flash attention on NVIDIA GPUs (bf16).
    config.model.attention_implementation = "xla"
    config.model.image_tower = ml_collections.ConfigDict(dict(
        name="vit", variant="mu/4", pooling="gap"))
    config.model.text_tower = ml_collections.ConfigDict(dict(
        name="transformer", variant="mu", context_length=12, causal=True))

    # Objectives and their weights, by name in mmjax.losses.LOSSES.
    config.losses = ml_collections.ConfigDict(dict(clip=1.0))
    # Evaluators, by name in mmjax.evaluators.EVALUATORS.
    config.evals = ("retrieval", "zeroshot", "linear_probe")

    # Peak learning rate after linear warmup, then cosine decay to end_learning_rate_factor x it.
    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.end_learning_rate_factor = 0.01
    config.optimizer = ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05, grad_clip_norm=1.0))

    # Parameters (name prefixes such as "image_tower") that training leaves bit-identical: LiT.
    config.frozen_params = ()
    # Start a new run from another run's checkpoint (a workdir or checkpoints/STEP folder), loading
    # the parameters under `params` (all if empty); the rest is initialised fresh.
    config.init_from = ml_collections.ConfigDict(dict(
        checkpoint=ml_collections.config_dict.placeholder(str), params=()))

    # Mesh axis sizes; -1 takes the devices the others leave.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical-to-mesh axis rules: a preset name in mmjax.sharding.RULES_PRESETS or a list of pairs.
    config.sharding_rules = "data_parallel"
    return config
