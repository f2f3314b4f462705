"""The base config every run derives from: each field, its meaning and a general default.

`configs/*.py` start here and override what their run changes (the smoke run shrinks the model,
ViT-B/16 sets its sizes); tools that write a workdir (mmjax.tools.weights.import_open_clip) start
here too, so the library never imports `configs/`.
"""

from __future__ import annotations

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def _shape_fields(image: bool) -> dict:
    """Unset shape fields, there so that the command line can set them."""
    names = ("width", "depth", "mlp_dim", "num_heads") + (("patch_size",) if image else ())
    return {name: placeholder(int) for name in names}


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # A label for logs, reports and benchmark tables.
    config.name = "base"
    # Seeds the parameters and the data order; two runs with one seed log identical losses.
    config.seed = 0
    # Optimizer steps to train for.
    config.total_steps = 100_000
    # Global batch size (over all devices and processes).
    config.batch_size = 256
    # Log train metrics and the progress line every this many steps.
    config.log_every_steps = 100
    # Trace steps (first, last) with jax.profiler into WORKDIR/profile; () traces nothing.
    config.profile_steps = ()
    # NaN/Inf loss or gradients: False stops the run naming the step; True skips such steps.
    config.skip_nonfinite_steps = False
    # Split each batch into this many micro-batches (less memory, same update: GradCache).
    config.grad_accum_steps = 1
    # Evaluate on config.data.eval every this many steps (and always at the end); 0: at the end
    # only.
    config.eval_every_steps = 5_000
    # Save a checkpoint every this many steps (and always at the end).
    config.checkpoint_every_steps = 2_000
    # The latest checkpoints kept in WORKDIR/checkpoints.
    config.keep_checkpoints = 2
    # Also keep there the checkpoint with the best value of this eval metric (for example
    # "eval/mmjax_shapes/i2t_recall@1"; each evaluated step is saved with its metrics, and
    # orbax keeps the best); None: do not.
    config.keep_best_by = placeholder(str)
    # "max" or "min".
    config.keep_best_mode = "max"
    # A folder on each host's local disk (a local SSD): a preempted run saves its stopping step
    # there in seconds, one copy a process, and copies it to WORKDIR/emergency in the
    # background; a restart on the same hosts resumes from it (mmjax/training/emergency.py).
    # None: the preempted step is saved as every other checkpoint.
    config.local_checkpoint_dir = placeholder(str)
    # Weights & Biases, beside metrics.jsonl and TensorBoard: set project (with entity, name) to
    # log there (pip install wandb). mode "offline" writes locally for `wandb sync`; run_id
    # None: one derived from the workdir, so a resumed run logs into the same W&B run.
    config.wandb = ml_collections.ConfigDict()
    config.wandb.project = placeholder(str)
    config.wandb.entity = placeholder(str)
    config.wandb.name = placeholder(str)
    config.wandb.mode = "online"
    config.wandb.run_id = placeholder(str)

    config.data = ml_collections.ConfigDict()
    # The train and eval dataset specs: 'tfds:NAME[:SPLIT]' (TFDS, never downloaded; the
    # embedded mmjax_shapes is generated locally on first use) or 'shards:DIR[:SPLIT]'
    # (python -m input_pipeline.convert.make_shards).
    config.data.train = "tfds:mmjax_shapes:train"
    config.data.eval = "tfds:mmjax_shapes:test"
    # Where TFDS datasets live; None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
    config.data.tfds_data_dir = placeholder(str)
    # Images are resized to image_size x image_size.
    config.data.image_size = 224
    # Pixel normalisation the model applies (on the device) to the pipeline's uint8 images:
    # "minus_one_one" or "clip" (OpenAI's mean and std).
    config.data.normalization = "minus_one_one"
    # Image preprocessing ops of train_preprocess and eval_preprocess (input_pipeline/preprocess.py
    # OPS), big_vision style; `size` defaults to image_size.
    config.data.train_preprocess = "decode_jpeg_and_inception_crop(scale=(0.9, 1.0))"
    config.data.eval_preprocess = "decode|resize_shorter|center_crop"
    # Bad examples (undecodable images, no caption) are skipped and counted (data/skipped); the
    # run stops, naming them, when more than this fraction of those read is bad.
    config.data.max_bad_fraction = 0.01
    # A run resumes over the data, seed and global batch its checkpoint was trained with; True
    # lets it go on after one of them changed (new training data is read from its beginning,
    # the change is printed). False stops the run naming the change.
    config.data.allow_change_on_resume = False
    # Captions per eval image for retrieval (5 for COCO / Flickr30k: any of an image's captions
    # counts); the first caption serves the other evaluators.
    config.data.eval_captions_per_image = 1
    # Audio (models with an audio tower): clips resampled to `rate`, cropped or repeated to the
    # length whose log-mel spectrogram has exactly `frames` frames of `frame_length` samples
    # every `hop`, `num_mels` mel bins (input_pipeline/audio.py names the ops; the chains'
    # ops take these values unless they set their own).
    config.data.audio = ml_collections.ConfigDict(dict(
        rate=16_000, frames=96, hop=160, frame_length=400, num_mels=80,
        train_preprocess="decode_wav|resample|crop_or_pad(random=True)|log_mel|spec_augment",
        eval_preprocess="decode_wav|resample|crop_or_pad|log_mel"))
    # Video (models with a video tower): a clip of `frames` frames, every `stride`-th stored
    # frame from a random start in training and the centred one in evaluation, each frame
    # image_size square (input_pipeline/video.py names the ops; one crop for the whole clip).
    config.data.video = ml_collections.ConfigDict(dict(
        frames=8, stride=1,
        train_preprocess="decode_frames|sample_clip(random=True)|resize_shorter|random_crop",
        eval_preprocess="decode_frames|sample_clip|resize_shorter|center_crop"))
    # Global batch size for evaluation; padded up to a multiple of the batch devices, and the
    # last batch is padded, never dropped.
    config.data.eval_batch_size = 512
    # The linear probe's labelled training images: the first probe_examples of probe_train
    # (None: config.data.train).
    config.data.probe_train = placeholder(str)
    config.data.probe_examples = 5000

    config.tokenizer = ml_collections.ConfigDict()
    # 'bytes' (no file), 'words' (a word list), 'sentencepiece' (a .model file, e.g. from
    # python -m input_pipeline.convert.make_vocab) or 'clip_bpe' (CLIP's merges file,
    # bpe_simple_vocab_16e6.txt.gz).
    config.tokenizer.name = "bytes"
    # Tokens per text, including begin- and end-of-text; the text tower's context length.
    config.tokenizer.context_length = 77
    # The vocabulary file of 'words', 'sentencepiece' and 'clip_bpe' (others ignore it).
    config.tokenizer.vocabulary_file = placeholder(str)
    # SentencePiece only: False lays texts out without a begin-of-text token, and pad_id pads
    # with another id than the model's pad piece (SigLIP's c4_en tokenisation: add_bos=False,
    # pad_id=1, its end-of-text). Captioning needs the begin-of-text token.
    config.tokenizer.add_bos = True
    config.tokenizer.pad_id = placeholder(int)

    config.model = ml_collections.ConfigDict()
    # A name in mmjax.models.MODELS.
    config.model.name = "clip"
    # Width of the shared image-text embedding.
    config.model.embed_dim = 512
    # Compute dtype ('float32', 'bfloat16'); parameters are always float32.
    config.model.dtype = "float32"
    # Rematerialisation policy for transformer blocks ('none', 'minimal', 'full', 'save_dots').
    config.model.remat = "none"
    # Run each tower's blocks under jax.lax.scan: compile time stays flat with depth.
    config.model.scan_layers = False
    # Attention kernel: "xla" everywhere, "cudnn" for flash attention on NVIDIA GPUs (bf16).
    config.model.attention_implementation = "xla"
    # The image tower (mmjax.models.TOWERS["image"]) and its size: a variant "SIZE/PATCH"; any of
    # width, depth, mlp_dim, num_heads, patch_size given overrides the variant's.
    # patch_dropout: the share of patch tokens dropped at random in training (FLIP; the class
    # token is always kept, evaluation sees every patch); 0 keeps them all.
    config.model.image_tower = ml_collections.ConfigDict(dict(
        name="vit", variant="B/16", pooling="cls", patch_dropout=0.0,
        **_shape_fields(image=True)))
    # The text tower (mmjax.models.TOWERS["text"]), sized the same way; its context length and pad /
    # end-of-text ids are the tokenizer's unless set here.
    config.model.text_tower = ml_collections.ConfigDict(dict(
        name="transformer", variant="clip", causal=True, **_shape_fields(image=False)))
    # An audio tower (mmjax.models.TOWERS["audio"]: "ast", a ViT over the log-mel spectrogram as a
    # one-channel image), sized like the image tower; None: no audio. A model has the
    # modalities whose tower is set: image_tower=None and an audio tower make an audio-text model.
    config.model.audio_tower = placeholder(ml_collections.ConfigDict)
    # A video tower (mmjax.models.TOWERS["video"]: "vivit", a ViT over tubelets of
    # `tubelet_frames` frames, joint or factorised space-time attention), sized like the image
    # tower; None: no video.
    config.model.video_tower = placeholder(ml_collections.ConfigDict)

    # Objectives and their weights, by name in mmjax.losses.LOSSES.
    config.losses = ml_collections.ConfigDict(dict(clip=1.0))
    # The modality pairs the contrastive losses (clip, siglip) align, e.g. ("audio-text",
    # "image-text"); empty: every pair of the model's modalities. Each pair's loss weighs the same.
    config.contrastive_pairs = ()
    # The clip loss: examples with word-for-word identical captions are right answers for each
    # other, not negatives (for data with few distinct captions, such as the generated datasets).
    config.identical_captions_match = False
    # The reconstruction loss (image tokenizers): each pixel's squared error weighted
    # 1 + edge_weight x its distance from its 3x3 neighbourhood's mean, errors under noise_floor
    # 8-bit levels not counted (mmjax/losses/reconstruction.py); 0 and 0: the plain mean.
    config.reconstruction = ml_collections.ConfigDict(dict(edge_weight=0.0, noise_floor=0.0))
    # Evaluators, by name in mmjax.evaluation.evaluators.EVALUATORS; those the eval data cannot feed
    # (zero-shot without class names, the linear probe without labels) are skipped, saying why.
    config.evals = ("retrieval", "zeroshot", "linear_probe")
    # Several evaluation datasets, each with its own evaluators and interval, by set name
    # (mmjax/evaluation/eval_sets.py): config.eval_sets.coco = dict(data="tfds:coco_captions:test",
    # evals=("retrieval",), captions_per_image=5, every_steps=1000); metrics log as
    # eval/<set name>/<metric>. Empty: config.data.eval with config.evals.
    config.eval_sets = ml_collections.ConfigDict()
    # Caption generation (the captioning evaluator, --mode=caption): beam size 1 is greedy,
    # more is beam search.
    config.caption = ml_collections.ConfigDict(dict(beam_size=1))
    # Knowledge distillation (the `distill` loss): a trained model's workdir (or checkpoints/STEP)
    # whose tokenizer and image size match, and the softmax temperature of both similarities.
    config.distill = ml_collections.ConfigDict(dict(teacher=placeholder(str), temperature=1.0))

    # Text-to-image decoding (--mode=generate, inference.generate, the generation evaluator):
    # parallel steps, sampling temperature, seed, the guidance scale (1: none, 0: unconditional)
    # and the scales the evaluation samples at; the judge it scores them with
    # (mmjax/evaluation/judge.py).
    # candidates > 1 draws that many images a caption and keeps the one the contrastive run at
    # rerank_with (a CLIP, SigLIP or CoCa workdir, never the judge's) finds closest to it.
    config.generation = ml_collections.ConfigDict(dict(
        steps=8, temperature=1.0, seed=0, guidance_scale=1.0, guidance_scales=(0.0, 1.0, 2.0),
        candidates=1, rerank_with=placeholder(str)))
    config.judge = ml_collections.ConfigDict(dict(workdir=placeholder(str)))
    # A text-to-image model's image tokenizer: the workdir of the run that trained it, whose
    # encoder and decoder it loads frozen.
    config.image_tokenizer = ml_collections.ConfigDict(dict(workdir=placeholder(str)))

    # Peak learning rate after warmup_steps of linear warmup, then cosine decay to
    # end_learning_rate_factor x it.
    config.learning_rate = 5e-4
    config.warmup_steps = 2_000
    config.end_learning_rate_factor = 0.01
    # lr_mults: (parameter-name prefix, multiplier) pairs scaling a part's learning rate (and
    # so its weight decay), e.g. (("text_tower", 0.25),) for a pretrained tower fine-tuned
    # gently; the first prefix a parameter lies under applies.
    config.optimizer = ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2, grad_clip_norm=1.0, lr_mults=()))

    # Parameters (name prefixes such as "image_tower") that training leaves bit-identical: LiT.
    config.frozen_params = ()
    # Start a new run from another run's checkpoint (a workdir or checkpoints/STEP folder), loading
    # the parameters under `params` (all if empty); the rest is initialised fresh.
    # audio_tower_from: a run whose image tower starts the audio tower (AST: patch kernels summed
    # over RGB, position embeddings resampled to the spectrogram's patch grid).
    # video_tower_from: a run whose image tower starts the video tower (ViViT: the patch kernel
    # spread over a tubelet's frames, the spatial positions repeated over time).
    config.init_from = ml_collections.ConfigDict(dict(checkpoint=placeholder(str), params=(),
                                                      audio_tower_from=placeholder(str),
                                                      video_tower_from=placeholder(str)))

    # On CPUs: keep freed host memory for the next step (mmjax/training/host_memory.py) instead of
    # returning it to the system, so that each step does not page-fault its whole working set
    # back in (a compute-bound CPU step takes 15-30 % less time; an input-bound run, whose
    # tf.data threads then share one malloc arena, gains nothing). Set before JAX starts.
    config.reuse_host_memory = False
    # Mesh axis sizes; -1 takes the devices the others leave.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical-to-mesh axis rules: a preset name in mmjax.sharding.RULES_PRESETS or a list of pairs.
    config.sharding_rules = "data_parallel"
    # A TPU pod the run is meant for ("v5e-256", or libtpu's "v5e:16x16"), over target_slices
    # slices: main.py compiles the train step for it first (mmjax.tools.aot) and refuses a run
    # that would not fit its chips' memory, with the figure and what would help. None: no check.
    config.target_topology = placeholder(str)
    config.target_slices = 1
    return config


# Config sections whose entries a run chooses by name: a saved one is taken whole (the base
# config's clip loss must not join a tokenizer run's reconstruction loss when it resumes).
CHOSEN_BY_NAME = ("losses", "eval_sets")


def fill_missing(saved: dict, base=None) -> dict:
    """A config snapshot (a workdir's config.json) with the fields it lacks taken from the base
    config: a workdir written by an older version still runs. Saved values are never changed."""
    base = base_config() if base is None else base
    for key, default in base.items():
        if key not in saved:
            saved[key] = default.to_dict() if hasattr(default, "to_dict") else default
        elif (isinstance(saved[key], dict) and hasattr(default, "to_dict")
              and key not in CHOSEN_BY_NAME):
            fill_missing(saved[key], default)
    return saved


def plain(value):
    """A config value as plain data (ConfigDicts as dicts, tuples as lists), to compare or show."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
