"""The preflight's checks of single fields: their names and their values.

Every field a config (or the command line) sets must be
one that something reads, so a misspelt `--config.learnin_rate=0.1` is named, with the field it
was probably meant to be, instead of being silently ignored.

The base config (mmjax/defaults.py) is the schema. Sections whose entries a run names itself
are open here and checked by what reads them: the losses and evaluators by their registries,
the eval sets by `eval_sets.FIELDS`, the model's fields by the model class it builds. The
tokenizer section may also hold what any tokenizer takes (an imported model's token ids).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import math
import numbers

from mmjax import conventions, defaults, models, text_tokenizers
from mmjax.evaluation import eval_sets
from mmjax.models import layers

# Sections that hold entries a run chooses by name, or a model's own keyword arguments.
OPEN_SECTIONS = ("losses", "eval_sets", "model")


def check_field_names(c) -> None:
    """Adds a problem for each field no part of mmjax reads, with the closest known name."""
    schema = defaults.plain(defaults.base_config())
    for tokenizer in text_tokenizers.TOKENIZERS.values():
        for name in inspect.signature(tokenizer).parameters:
            schema["tokenizer"].setdefault(name, None)
    _walk(c, c.config, schema, "config")
    for name, entry in (c.config.get("eval_sets") or {}).items():
        if not hasattr(entry, "keys"):
            c.add(f"config.eval_sets.{name}", "is not a set of fields",
                  "give a dict, e.g. dict(data='tfds:coco_captions:test')")
            continue
        for key in entry.keys():
            if key not in eval_sets.FIELDS:
                _unknown(c, f"config.eval_sets.{name}", key, eval_sets.FIELDS)


def _walk(c, node, schema, prefix: str) -> None:
    for key in node.keys():
        if key not in schema:
            _unknown(c, prefix, key, list(schema.keys()))
            continue
        known = schema[key]
        if (key not in OPEN_SECTIONS or prefix != "config") and isinstance(known, dict) and (
                hasattr(node[key], "keys")):
            _walk(c, node[key], known, f"{prefix}.{key}")


def _unknown(c, prefix: str, key: str, known) -> None:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    c.add(f"{prefix}.{key}", f"no such field{hint}",
          f"use a field of {prefix} (docs/reference/config.md lists them all)" if not close
          else f"set {prefix}.{close[0]} instead")


def check_field_values(c) -> None:
    """Values that must be counts, fractions or one of a few names."""
    config = c.config
    for field in ("total_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints", "grad_accum_steps", "data.image_size",
                  "data.eval_batch_size", "data.eval_captions_per_image", "data.probe_examples",
                  "caption.beam_size"):
        c.count(field)
    for field in ("eval_every_steps", "warmup_steps"):
        c.count(field, 0, "set it to 0 or more (eval_every_steps 0: evaluate only at the end)")
    if isinstance(config.warmup_steps, int) and isinstance(config.total_steps, int) and (
            config.total_steps < config.warmup_steps):
        c.notes.append(f"config.warmup_steps ({config.warmup_steps}) is more than "
                       f"config.total_steps ({config.total_steps}): the learning rate never "
                       f"reaches config.learning_rate.")
    rate = config.learning_rate
    if not isinstance(rate, numbers.Real) or not math.isfinite(rate) or rate <= 0:
        c.add("config.learning_rate", "must be a positive number", "for example 5e-4")
    fraction = config.data.max_bad_fraction
    if not isinstance(fraction, numbers.Real) or not 0 <= fraction < 1:
        c.add("config.data.max_bad_fraction", "must be a fraction in [0, 1)",
              "for example 0.01 (stop when over 1% of the examples read are bad)")
    modalities = conventions.model_modalities(config.model)
    for modality in modalities:
        dropout = config.model[f"{modality}_tower"].get("patch_dropout", 0.0)
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            c.add(f"config.model.{modality}_tower.patch_dropout", "must be a fraction in [0, 1)",
                  "for example 0.5 (FLIP: half of the patches dropped in training), or 0")
    if "audio" in modalities:
        for field in ("rate", "frames", "hop", "frame_length", "num_mels"):
            c.count(f"data.audio.{field}")
    for field, valid in (("model.dtype", models.DTYPES), ("model.remat", layers.REMAT_POLICIES)):
        if c.value(field) not in valid:
            c.add(f"config.{field}", "is not a valid choice", f"use one of {sorted(valid)}")
    if config.data.normalization not in conventions.IMAGE_NORMALIZATIONS:
        c.add("config.data.normalization", "is not a known normalisation",
              f"use one of {sorted(conventions.IMAGE_NORMALIZATIONS)}")
    if config.keep_best_mode not in ("max", "min"):
        c.add("config.keep_best_mode", "must be 'max' or 'min'", "set it to 'max' or 'min'")
    if config.keep_best_by and not str(config.keep_best_by).startswith("eval/"):
        c.add("config.keep_best_by", "is not an eval metric name",
              "name one as logged, e.g. 'eval/mmjax_shapes/i2t_recall@1'")
    profile = tuple(config.profile_steps)
    if profile and not (len(profile) == 2 and all(isinstance(s, int) for s in profile)
                        and 1 <= profile[0] <= profile[1]):
        c.add("config.profile_steps", "must be (first, last) steps, 1 <= first <= last",
              "for example '(10, 14)' (five steps), or () for none")
    if not config.data.train:
        c.add("config.data.train", "no training data", "give a spec, e.g. 'shards:/data/x:train'")
    if config.wandb.project:
        if config.wandb.mode not in ("online", "offline", "disabled"):
            c.add("config.wandb.mode", "is not a W&B mode", "use 'online', 'offline' or 'disabled'")
        if importlib.util.find_spec("wandb") is None:
            c.add("config.wandb.project", "logging to Weights & Biases needs the wandb package, "
                  "which is not installed", "pip install wandb, or unset config.wandb.project")
