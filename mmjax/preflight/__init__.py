"""The preflight: every check that needs no compilation, before anything is compiled or trained.

`check(config, ...)` looks at the config's fields, the mesh against the devices, the tokenizer,
the model (built abstractly: its parameter names and the outputs of one abstract forward pass),
what each loss and evaluator declares it needs, the paths (init_from, teacher, workdir:
`path_checks`) and, given `data` (the input pipeline: `data_checks`), a sample of each dataset
(labels, class names, how the tokenizer reads its captions). It reports every problem at once,
each with the field, its value and the fix, and returns a `Plan`: the evaluators that will run
(those the eval data cannot feed are skipped, with a line saying why) and the eval batch size,
padded to the batch devices.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmjax import (
    conventions,
    defaults,
    losses,
    models,
    paths,
    sharding,
    text_tokenizers,
)
from mmjax.evaluation import eval_sets, evaluators
from mmjax.preflight import data_checks, field_checks, path_checks
from mmjax.training import checkpoint


@dataclasses.dataclass(frozen=True)
class Problem:
    field: str
    value: Any
    message: str
    fix: str

    def __str__(self) -> str:
        # A whole config section (config.model) is too long to show.
        shown = f" = {self.value!r}" if len(repr(self.value)) <= 100 else ""
        end = "" if self.message.endswith("?") else "."
        return f"{self.field}{shown}: {self.message}{end} Fix: {self.fix}."


class ConfigError(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"The preflight found {len(problems)} problem(s) before compiling "
                         "anything:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclasses.dataclass
class Plan:
    evals: tuple[str, ...]  # every evaluator some eval set runs
    eval_batch_size: int
    notes: list[str] = dataclasses.field(default_factory=list)
    # The eval sets, each with the evaluators its data can feed (mmjax.evaluation.eval_sets).
    eval_sets: tuple[eval_sets.EvalSet, ...] = ()
    # Each loss of config.losses with the settings it reads (mmjax.losses.Objective takes them).
    loss_settings: dict[str, dict] = dataclasses.field(default_factory=dict)

    def print_notes(self) -> None:
        if jax.process_index() == 0:
            for note in self.notes:
                print(f"Note: {note}", flush=True)


class _Checks:
    def __init__(self, config):
        self.config = config
        self.problems: list[Problem] = []
        self.notes: list[str] = []

    def value(self, field: str):
        """The config's value at a dotted field ('data.image_size'); None where it is missing."""
        node = self.config
        for part in field.removeprefix("config.").split("."):
            node = node.get(part) if hasattr(node, "get") else None
        return node

    def add(self, field: str, message: str, fix: str) -> None:
        self.problems.append(Problem(field, defaults.plain(self.value(field)), message, fix))

    def flag(self, name: str, value, message: str, fix: str) -> None:
        """A problem with something other than a config field (a flag such as --workdir)."""
        self.problems.append(Problem(name, value, message, fix))

    def count(self, field: str, minimum: int = 1, fix: str = "") -> None:
        value = self.value(field)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
            self.add(f"config.{field}", f"must be an integer of at least {minimum}",
                     fix or f"set it to {max(minimum, 1)} or more")


def _mesh(c: _Checks, mesh) -> dict | None:
    """The batch layout: batch devices and processes, or None when the mesh is unusable."""
    config = c.config
    if mesh is not None:
        shape, platform = dict(mesh.shape), mesh.devices.flat[0].platform
        processes = len({d.process_index for d in mesh.devices.flat})
    else:
        platform, processes = jax.devices()[0].platform, jax.process_count()
        try:
            shape = sharding.resolve_mesh_shape(dict(config.mesh), jax.device_count())
        except ValueError as e:
            c.add("config.mesh", str(e).rstrip("."), f"make the sizes multiply to the "
                  f"{jax.device_count()} devices, or set one axis to -1")
            return None
    try:
        rules = sharding.get_rules(config.sharding_rules)
    except (ValueError, TypeError) as e:
        c.add("config.sharding_rules", str(e).rstrip("."), "use a preset name or (logical, "
              "mesh axes) pairs")
        return None
    devices = sharding.batch_devices(shape, rules)
    accum = config.grad_accum_steps if isinstance(config.grad_accum_steps, int) else 1
    multiple, batch = max(accum, 1) * devices, config.batch_size
    if isinstance(batch, int) and batch > 0 and batch % multiple:
        lower, upper = max(multiple, batch // multiple * multiple), -(-batch // multiple) * multiple
        c.add("config.batch_size", f"does not split into {accum} micro-batch(es) that each "
              f"divide over the {devices} devices of the batch axes",
              f"use a multiple of {multiple}, e.g. "
              + (f"{lower} or {upper}" if lower != upper else f"{upper}"))
    if config.model.get("attention_implementation") == "cudnn" and (
            platform != "gpu" or config.model.dtype not in ("bfloat16", "float16")):
        c.add("config.model.attention_implementation", f"'cudnn' needs NVIDIA GPUs and a "
              f"bfloat16 or float16 config.model.dtype; found {platform} devices and "
              f"{config.model.dtype}", "set it to 'xla'")
    return {"batch_devices": devices, "processes": processes}


def _eval_sets(c: _Checks) -> tuple[eval_sets.EvalSet, ...]:
    """config.eval_sets' entries: known fields, a dataset each, sensible numbers."""
    sets = eval_sets.eval_sets(c.config)
    for s in sets:
        if s.field == "config.data.eval":
            continue
        if not s.data or not isinstance(s.data, str):
            c.add(s.field, "names no dataset", "set its data, e.g. 'tfds:coco_captions:test'")
        for key, minimum in (("every_steps", 0), ("captions_per_image", 1),
                             ("probe_examples", 1)) + ((("max_examples", 1),)
                                                       if s.max_examples is not None else ()):
            value = getattr(s, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                c.add(s.field, f"{key} = {value!r} must be an integer of at least {minimum}",
                      f"set {key} to {max(minimum, 1)} or more")
    return sets


def _names(c: _Checks, sets) -> None:
    """The registries' names: losses and their weights, evaluators."""
    config = c.config
    weights = dict(config.losses)
    unknown = [n for n in weights if n not in losses.LOSSES]
    if unknown or not weights:
        c.add("config.losses", f"names unknown losses {unknown}" if unknown else "is empty",
              f"use names from {sorted(losses.LOSSES)}")
    for name, weight in weights.items():
        if not isinstance(weight, numbers.Real) or not weight > 0:
            c.add(f"config.losses.{name}", "a loss weight must be a positive number", "e.g. 1.0")
    for s in sets:
        field = "config.evals" if s.field == "config.data.eval" else s.field
        for name in s.evals:
            if name not in evaluators.EVALUATORS:
                c.add(field, f"{name!r} is not an evaluator",
                      f"use names from {sorted(evaluators.EVALUATORS)}")


def _tokenizer(c: _Checks):
    config = c.config
    if config.tokenizer.name not in text_tokenizers.TOKENIZERS:
        c.add("config.tokenizer.name", "is not a tokenizer",
              f"use one of {sorted(text_tokenizers.TOKENIZERS)} (docs/guides/data.md, tokenizers)")
        return None
    try:
        tokenizer = text_tokenizers.build_tokenizer(config.tokenizer)
    except (ValueError, TypeError, OSError) as e:  # OSError: a missing or unreadable file
        c.add("config.tokenizer.vocabulary_file", str(e).rstrip("."),
              f"give the {config.tokenizer.name} tokenizer's vocabulary file "
              "(docs/guides/data.md, tokenizers)")
        return None
    if tokenizer.context_length < 3:
        c.add("config.tokenizer.context_length", "leaves no room for text between the "
              "begin- and end-of-text tokens", "use at least 3")
    for field, value in models.text_tower_ids(tokenizer).items():
        if (config.model.get("text_tower") or {}).get(field, value) != value:
            c.add(f"config.model.text_tower.{field}", f"differs from the tokenizer's ({value})",
                  "leave it unset: the text tower takes the tokenizer's")
    model_vocab = config.model.get("vocab_size")
    if model_vocab and tokenizer.vocab_size > model_vocab:
        c.add("config.model.vocab_size", f"is smaller than the tokenizer's {tokenizer.vocab_size} "
              "ids", "raise it or unset it")
    return tokenizer


def _model(c: _Checks, tokenizer, evals, sets, mode_methods) -> dict | None:
    """Builds the model abstractly and checks what the losses and evaluators need of it."""
    config = c.config
    try:
        inputs = models.ModelInputs.from_data(config.data)
        model = nnx.eval_shape(lambda: models.build_model(
            config.model, inputs, tokenizer, seed=0))
    except (ValueError, TypeError, KeyError) as e:
        c.add("config.model", str(e).rstrip("."), "see mmjax/defaults.py for the model fields")
        return None
    graphdef, params = nnx.split(model, nnx.Param)
    batch = {key: jax.ShapeDtypeStruct((2, *shape), dtype) for key, (shape, dtype) in
             models.example_inputs(config.model, inputs, tokenizer.context_length).items()}
    try:
        outputs = jax.eval_shape(lambda p, b: nnx.merge(graphdef, p)(
            b, rng=jax.random.key(0)), params, batch)
    except Exception as e:  # noqa: BLE001 - any failure of the forward pass is a config problem
        c.add("config.model", f"the model fails on a batch: {e}", "fix the model config")
        return None
    shapes = checkpoint.parameter_shapes(params)
    names = list(shapes)

    loss_settings = {}
    for name in config.losses:
        loss = losses.LOSSES.get(name)
        try:
            loss_settings[name] = loss.settings(config, tokenizer) if loss else {}
        except losses.SettingError as e:
            c.add(e.field, e.problem, e.fix)
            continue
        needed = loss.outputs(loss_settings[name]) if loss else ()
        missing = [k for k in needed if k not in outputs]
        if missing:
            c.add("config.losses", f"the {name!r} loss reads {missing}, which the "
                  f"{config.model.name!r} model does not output",
                  loss.missing_output_fix or "use a model that outputs them")
    integer_outputs = [k for k, v in outputs.items() if np.issubdtype(v.dtype, np.integer)]
    if config.grad_accum_steps != 1 and integer_outputs:
        c.add("config.grad_accum_steps", f"micro-batches cannot be used with a model that draws "
              f"batch-wide labels ({integer_outputs})", "set it to 1")

    lr_mults = tuple(config.optimizer.get("lr_mults", ()))
    if not all(isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)
               and isinstance(pair[1], (int, float)) and pair[1] > 0 for pair in lr_mults):
        c.add("config.optimizer.lr_mults", f"{lr_mults!r} is not (prefix, multiplier) pairs "
              "with multipliers above 0", "give e.g. (('text_tower', 0.25),); freeze a part "
              "with config.frozen_params, not a multiplier of 0")
        lr_mults = ()
    for prefix, _ in lr_mults:
        if conventions.under_prefixes(prefix, config.frozen_params):
            c.add("config.optimizer.lr_mults", f"{prefix!r} is frozen (config.frozen_params), "
                  "so no learning rate reaches it", "drop it from one of the two")
    for field, prefixes in (("config.frozen_params", config.frozen_params),
                            ("config.init_from.params", config.init_from.params),
                            ("config.optimizer.lr_mults", [p for p, _ in lr_mults])):
        for prefix in prefixes:
            if not any(conventions.under_prefixes(n, (prefix,)) for n in names):
                c.add(field, f"{prefix!r} names no parameter", "use top-level names such as "
                      f"{sorted({n.split('/')[0] for n in names})}")

    for name in evals:
        evaluator = evaluators.EVALUATORS.get(name)
        lacking = [m for m in (evaluator.model_methods if evaluator else ())
                   if not hasattr(model, m)]
        naming = [s for s in sets if name in s.evals]
        if lacking and naming:
            field = "config.evals" if naming[0].field == "config.data.eval" else naming[0].field
            c.add(field, f"the {name!r} evaluator needs a model that has {lacking}, "
                  f"which the {config.model.name!r} model has not",
                  f"remove {name!r} from its evals, or use a model that has them")
        elif lacking:  # the mode itself runs it (--mode=caption)
            c.add("config.model.name", f"this mode runs the {name!r} evaluator, which needs a "
                  f"model that has {lacking}", "give a workdir and config of such a model")
    lacking = [m for m in mode_methods if not hasattr(model, m)]
    if lacking:
        c.add("config.model.name", f"this mode calls {lacking}, which the "
              f"{config.model.name!r} model has not", "give the workdir and config of a model "
              "that can (--mode=generate: a text-to-image model)")
    return {"outputs": outputs, "shapes": shapes, "loss_settings": loss_settings}


def check(config, *, mesh=None, data: data_checks.DataAccess | None = None,
          roles=("train", "eval"), workdir: str | None = None, required_evals=(),
          mode_methods=(), needs_checkpoint: bool = False) -> Plan:
    """Every check that needs no compilation; raises ConfigError listing all problems.

    `data` (the input_pipeline.pipeline module) adds the data checks for `roles`; without it
    only the config, model and paths are checked.
    `required_evals` are evaluators the mode runs whatever config.evals says (captioning);
    `mode_methods` the model methods the mode calls itself (generation);
    `needs_checkpoint`: the mode evaluates the workdir's checkpoint, which must be there.
    """
    c = _Checks(config)
    field_checks.check_field_names(c)
    field_checks.check_field_values(c)
    if config.get("identical_captions_match") and "clip" not in config.losses:
        c.add("config.identical_captions_match", "only the clip loss reads it and config.losses "
              f"has no 'clip' ({sorted(config.losses)})", "add clip, or set it to False")
    sets = _eval_sets(c)
    named_evals = tuple(dict.fromkeys([*(e for s in sets for e in s.evals), *required_evals]))
    _names(c, sets)
    # Folders an evaluator reads, when a run will evaluate (a benchmark, with no workdir, won't).
    for name in named_evals if workdir is not None else ():
        evaluator = evaluators.EVALUATORS.get(name)
        for key, fix in (evaluator.config_paths if evaluator else {}).items():
            value = path_checks.dotted(config, key)
            if not value or not paths.exists(value):
                c.add(f"config.{key}", f"the {name!r} evaluator reads it, and it is "
                      + ("unset" if not value else "not there"), fix)
    layout = _mesh(c, mesh)
    tokenizer = _tokenizer(c)
    if tokenizer is not None and tokenizer.bos_id is None and "captioning" in named_evals:
        c.add("config.tokenizer.add_bos", "captioning starts each caption from the "
              "begin-of-text token, which this tokenizer leaves out",
              "set it to True (a model trained with it), or drop 'captioning' from the evals")
    # The model is built only from fields that passed (one problem, one line).
    model_fields_ok = not any(p.field.startswith("config.model") for p in c.problems)
    model = (_model(c, tokenizer, named_evals, sets, mode_methods)
             if tokenizer is not None and model_fields_ok else None)
    # Only training reads the teacher: evaluating a distilled run needs none.
    needs_teacher = "train" in roles and any(losses.LOSSES[n].needs_teacher
                                             for n in config.losses if n in losses.LOSSES)
    path_checks.check_paths(c, workdir, needs_teacher,
                            model["shapes"] if model is not None else None, needs_checkpoint)
    known = lambda names: tuple(e for e in names if e in evaluators.EVALUATORS)
    # A mode's required evaluators run on the first set.
    sets = tuple(dataclasses.replace(s, evals=known((*s.evals, *(required_evals if not i else ()))))
                 for i, s in enumerate(sets))
    if data is None:
        data_checks.check_keep_best_by(c, sets)
    elif not c.problems:
        needs_labels = any("label" in losses.LOSSES[n].batch_keys for n in config.losses
                           if n in losses.LOSSES)
        sets = data_checks.check_data(c, data, roles, tokenizer, layout, sets, needs_labels)
        missing = [e for e in required_evals if not sets or e not in sets[0].evals]
        if missing:
            c.add(sets[0].field if sets else "config.data.eval",
                  f"cannot feed the {missing} evaluator", "see the notes")
    if c.problems:
        raise ConfigError(c.problems)
    multiple = math.lcm(layout["batch_devices"], layout["processes"])
    eval_batch_size = -(-config.data.eval_batch_size // multiple) * multiple
    if eval_batch_size != config.data.eval_batch_size:
        c.notes.append(f"config.data.eval_batch_size {config.data.eval_batch_size} is padded to "
                       f"{eval_batch_size}, a multiple of the {layout['batch_devices']} batch "
                       "devices (padding rows are not counted).")
    return Plan(evals=tuple(dict.fromkeys(e for s in sets for e in s.evals)),
                eval_batch_size=eval_batch_size, notes=c.notes, eval_sets=sets,
                loss_settings=model["loss_settings"])
