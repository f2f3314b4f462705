"""The preflight's path checks: init_from, the distillation teacher, the reranker and the
workdir.

Names and shapes come from the checkpoints' metadata (no array is read), so a checkpoint that
does not fit is refused before anything is compiled, and a workdir is never touched.
"""

from __future__ import annotations

import json
import os

from mmjax import conventions, defaults, inference, models, paths
from mmjax.training import checkpoint


def check_paths(c, workdir: str | None, needs_teacher: bool, shapes: dict | None,
                needs_checkpoint: bool) -> None:
    """init_from, the teacher and the workdir; `shapes` (parameter name -> shape) is the
    model's, when it could be built."""
    config = c.config
    if config.init_from.params and not config.init_from.get("checkpoint"):
        c.add("config.init_from.params", "selects parameters but no checkpoint is given",
              "set config.init_from.checkpoint to a workdir or checkpoints/STEP folder")
    # The workdir's own checkpoint, looked up once. A run that resumes from it takes every
    # parameter from it (Trainer.initial_state): where it started from need not be there any
    # more (generating from a finished run). The old layout is not resumed.
    found = _find(workdir) if workdir is not None and not paths.isfile(workdir) else None
    resumes = found is not None and not checkpoint.is_legacy(*found)
    for field, source, prefixes, settings in models.pretrained_sources(config):
        if resumes and field == "config.init_from.checkpoint":
            continue
        if not source:
            if workdir is None:  # a benchmark or an abstract check: no run starts from it
                continue
            c.add(field, f"is unset, and the {config.model.name!r} model starts "
                  f"{list(prefixes)} from it", "train that part first and set this to its "
                  "run's workdir")
        elif not _find(source):
            c.add(field, "holds no mmjax checkpoint", "give a trained run's workdir, its "
                  "checkpoints/ folder or a checkpoints/STEP folder")
        else:
            _source_settings(c, field, source, settings)
            if shapes is not None:
                _source_shapes(c, field, source, prefixes, shapes)
    for modality in ("audio", "video"):
        field, tower_from = f"config.init_from.{modality}_tower_from", config.init_from.get(
            f"{modality}_tower_from")
        if tower_from and not _find(tower_from):
            c.add(field, "holds no mmjax checkpoint", "give a trained run's workdir (its image "
                  f"tower starts the {modality} tower)")
        elif tower_from and shapes is not None and not any(
                n.startswith(f"{modality}_tower/") for n in shapes):
            c.add(field, f"the model has no {modality} tower to start",
                  f"set config.model.{modality}_tower, or unset this")
    if needs_teacher:
        teacher = config.distill.get("teacher")
        if not teacher or not _find(teacher):
            c.add("config.distill.teacher", "the distill loss needs a trained teacher and none "
                  "is there", "set it to a trained run's workdir (or checkpoints/STEP)")
        else:
            _teacher_inputs(c, teacher)
    if workdir is None:
        return
    check_reranker(c, config.generation, config.judge.get("workdir"), _find)
    if paths.isfile(workdir):
        c.flag("--workdir", workdir, "is a file, not a folder",
               "give a folder (it is created if missing)")
        return
    if not paths.is_cloud(workdir):  # a bucket's permissions show only when writing
        existing = os.path.abspath(workdir)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.access(existing, os.W_OK):
            c.flag("--workdir", workdir, f"cannot be written ({existing} is not writable)",
                   "give a folder you can write to")
    if found and checkpoint.is_legacy(*found):
        c.flag("--workdir", workdir, "holds checkpoints in the layout of mmjax before 2026-12-02 "
               "(checkpoints/STEP/default and data_state.json), which this version does not "
               "resume", "finish that run with the version that started it, or start a new "
               f"--workdir with --config.init_from.checkpoint={workdir} (its parameters load); "
               "nothing was changed there")
        return
    if needs_checkpoint and not found:
        c.flag("--workdir", workdir, "holds no checkpoint to evaluate",
               "train first, or give a workdir that has checkpoints/")
    if not found:
        return
    try:
        saved_shapes = checkpoint.saved_parameter_shapes(*found)
        saved_data = (checkpoint.saved_data_state(workdir, found[1]) if paths.exists(
            paths.join(found[0], str(found[1]), checkpoint.DATA)) else None)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: the trainer falls back
        c.notes.append(f"The checkpoint at step {found[1]} in {found[0]} does not read back "
                       f"({type(e).__name__}); the run resumes from the newest one that does.")
        return
    if not config.data.get("allow_change_on_resume"):
        for field, (before, _) in checkpoint.data_changes(config, saved_data).items():
            c.add(field, f"differs from the {before!r} this workdir's checkpoint at step "
                  f"{found[1]} was trained with (its input position counts that data)",
                  f"resume with {field}={before!r}, or set "
                  "config.data.allow_change_on_resume=True to go on with the new value (new "
                  "training data is then read from its beginning)")
    if shapes is not None:
        differing = _differing(saved_shapes, shapes, shapes)
        if differing:
            c.flag("--workdir", workdir, f"holds checkpoints of another model, which this "
                   f"config cannot resume ({len(differing)} parameters differ, first: "
                   f"{differing[:2]})", "use a new --workdir, or this run's own config "
                   f"(--config=configs/from_workdir.py:{workdir}); nothing was changed there")


def _source_settings(c, field: str, source: str, settings: tuple) -> None:
    """Each dotted config key in `settings` must equal the source run's (its config.json). An
    entry (key, fill) compares a dict with `fill`'s fields where either side lacks them, and a
    missing value as `fill`: the values a field added since that run was trained takes by
    default."""
    if not settings:
        return

    try:
        theirs = inference.load_config(source)
    except FileNotFoundError as e:
        c.add(field, str(e).rstrip("."), "give a workdir written by mmjax")
        return
    for entry in settings:
        key, fill = entry if isinstance(entry, tuple) else (entry, None)
        mine, saved = (_filled(defaults.plain(dotted(cfg, key)), fill)
                       for cfg in (c.config, theirs))
        if mine != saved:
            c.add(f"config.{key}", f"is {mine}, but the run at {field} ({source}) was trained "
                  f"with {saved}", f"set config.{key}={saved}, or train that part again")


def _filled(value, fill):
    if isinstance(fill, dict):
        return defaults.fill_missing(dict(value), fill) if isinstance(value, dict) else value
    return fill if value is None else value


def dotted(config, key: str):
    """config's value at a dotted key ("judge.workdir"), None where a part is missing."""
    for part in key.split("."):
        config = config.get(part) if config is not None else None
    return config


def _source_shapes(c, field: str, source: str, prefixes: tuple, shapes: dict) -> None:
    """The parameters a run starts from `source` must be in its checkpoint, with this model's
    shapes."""
    saved = checkpoint.saved_parameter_shapes(*_find(source))
    wanted = [n for n in shapes if not prefixes or conventions.under_prefixes(n, prefixes)]
    missing = [n for n in wanted if n not in saved]
    differing = _differing(saved, shapes, [n for n in wanted if n in saved])
    if missing or differing:
        where = "config.init_from.params" if field == "config.init_from.checkpoint" else field
        c.add(where, (f"{len(missing)} parameters are not in {source} (first: {missing[:2]}); "
                      if missing else "") + (f"shapes differ: {differing[:2]}" if differing
                                             else ""),
              "select parameters the checkpoint has with these shapes, or make the model config "
              "match the checkpoint's")


def _differing(saved: dict, shapes: dict, names) -> list[str]:
    """'name: (saved shape) saved, (model shape) here' for each of `names` whose shapes differ."""
    return [f"{n}: {saved.get(n)} saved, {shapes[n]} here" for n in names
            if saved.get(n) != shapes[n]]


def _find(path: str):
    try:
        return checkpoint.find_checkpoint(path)
    except FileNotFoundError:
        return None


def _teacher_inputs(c, teacher: str) -> None:

    try:
        teacher_config = inference.load_config(teacher)
    except FileNotFoundError as e:
        c.add("config.distill.teacher", str(e).rstrip("."), "give a workdir written by mmjax")
        return
    for field, mine, theirs in (
            ("config.tokenizer", c.config.tokenizer, teacher_config.tokenizer),
            ("config.data.image_size", c.config.data.image_size, teacher_config.data.image_size),
            ("config.data.normalization", c.config.data.normalization,
             teacher_config.data.get("normalization", "minus_one_one"))):
        mine, theirs = _without_vocabulary_file(mine), _without_vocabulary_file(theirs)
        if mine != theirs:
            c.add(field, f"differs from the teacher's ({theirs}): the teacher must see the same "
                  "inputs", "set it to the teacher's")


def _without_vocabulary_file(value):
    """A config value as plain data; vocabulary files may live in different places."""
    value = defaults.plain(value)
    return ({k: v for k, v in value.items() if k != "vocabulary_file"}
            if isinstance(value, dict) else value)


def check_reranker(c, generation, judge_workdir: str | None, find) -> None:
    """Preflight: candidates is a positive count, and more than one has a contrastive run to
    choose by, which is not the judge's CLIP. `find` locates a workdir's checkpoint."""
    c.count("generation.candidates", 1, "set 1 (no choosing) or more, with "
            "config.generation.rerank_with")
    candidates, chooser = generation.get("candidates", 1), generation.get("rerank_with")
    if not isinstance(candidates, int) or candidates <= 1:
        return
    found = find(chooser) if chooser else None
    if not found:
        c.add("config.generation.rerank_with", f"{candidates} candidates a caption need a "
              "contrastive run to choose by, and " + ("none is set" if not chooser else
                                                      "it holds no mmjax checkpoint"),
              "give a CLIP or SigLIP run's workdir (not the judge's), or set "
              "config.generation.candidates=1")
        return
    try:
        model = inference.load_config(chooser).model.name
    except FileNotFoundError as e:
        c.add("config.generation.rerank_with", str(e).rstrip("."), "give a workdir written by "
              "mmjax")
        return
    if model not in inference.CONTRASTIVE_MODELS:
        c.add("config.generation.rerank_with", f"the run at {chooser} (a {model!r} model) embeds "
              "no image and text in one space",
              f"give a {' or '.join(map(repr, inference.CONTRASTIVE_MODELS))} run")
    judge_spec = paths.join(judge_workdir, "judge.json") if judge_workdir else None
    if judge_spec and paths.exists(judge_spec):
        judges_clip = json.loads(paths.read_text(judge_spec))["clip_workdir"]
        judges_found = find(judges_clip)
        if judges_found and judges_found[0] == found[0]:
            c.add("config.generation.rerank_with", f"is the judge's CLIP ({judges_clip}): it "
                  "would score the images it chose", "choose with another run (the judge is "
                  "never used for guidance or choosing)")
