"""The preflight's data checks: what a sample of each dataset says about the run.

Through a `DataAccess` (the input pipeline module, `input_pipeline.pipeline`, is one) the
preflight reads `DataFacts` of the train, eval and probe data from a few hundred records and
parses the preprocessing chains. These check how the tokenizer reads the training captions
(unknown words, truncation), that losses which read labels get them, that a batch fits the data,
which evaluators the eval data can feed (the others are skipped with a line saying why), and
that config.keep_best_by names a metric the evaluation will log.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from mmjax import conventions, text_tokenizers
from mmjax.evaluation import evaluators

# More unknown tokens, or more truncated captions, than these shares stops the run.
MAX_UNKNOWN_TOKEN_SHARE = 0.02
MAX_TRUNCATED_SHARE = 0.05


class DataAccess(Protocol):
    def describe_data(self, config, spec: str, default_split: str):
        """A DataFacts (input_pipeline.pipeline) of the dataset `spec`; raises ValueError or
        FileNotFoundError naming what is wrong with it."""

    def preprocess_error(self, config, chain: str, modality: str = "image") -> str | None:
        """What is wrong with an image or audio preprocessing chain (an unknown op, bad
        arguments), or None."""


def check_captions(c, tokenizer, facts) -> None:
    """How the tokenizer reads a sample of the training captions: unknown words and truncation."""
    if tokenizer.name == "ids_only":
        c.add("config.tokenizer.name", "'ids_only' cannot tokenise training captions",
              "set config.tokenizer to the model's tokenizer and vocabulary")
        return
    rows = [tokenizer.content_ids(text) for text in facts.captions]
    if not rows:
        return
    total = max(sum(len(r) for r in rows), 1)
    unknown = sum(r.count(tokenizer.unk_id) for r in rows) if tokenizer.unk_id is not None else 0
    byte_lengths = [len(t.encode("utf-8")) for t in facts.captions]
    bytes_context = int(-(-(np.percentile(byte_lengths, 99) + 2) // 8) * 8)
    if unknown / total > MAX_UNKNOWN_TOKEN_SHARE:
        c.add("config.tokenizer.name", f"{unknown / total:.0%} of the tokens of {len(rows)} "
              f"sampled captions of {facts.spec} are unknown to this {tokenizer.name} vocabulary "
              f"({tokenizer.vocab_size} ids): they would all become one id and could not be "
              "learned",
              f"--config.tokenizer.name=bytes --config.tokenizer.context_length={bytes_context} "
              "(holds 99% of them), or build a vocabulary from these captions: python -m "
              f"input_pipeline.convert.make_vocab --input={facts.spec} --output=DIR/vocab "
              "--vocab_size=8000, then --config.tokenizer.name=sentencepiece "
              "--config.tokenizer.vocabulary_file=DIR/vocab.model")
        return
    room = tokenizer.context_length - 2
    truncated = sum(len(r) > room for r in rows) / len(rows)
    needed = int(np.percentile([len(r) for r in rows], 99)) + 2
    if truncated > MAX_TRUNCATED_SHARE:
        c.add("config.tokenizer.context_length", f"{truncated:.0%} of {len(rows)} sampled "
              f"captions of {facts.spec} are longer and would lose their ends",
              f"raise it to {needed} (holds 99% of them)")
    elif truncated:
        c.notes.append(f"{truncated:.1%} of the sampled training captions are longer than "
                       f"config.tokenizer.context_length ({tokenizer.context_length}) and are "
                       f"cut; {needed} would hold 99% of them.")


def check_data(c, data: DataAccess, roles, tokenizer, layout, sets, needs_labels) -> tuple:
    """Describes each dataset; returns the eval sets (mmjax.evaluation.eval_sets), each with the
    evaluators its data can feed."""
    config = c.config
    for field in ("train_preprocess", "eval_preprocess"):
        error = data.preprocess_error(config, config.data[field])
        if error:
            c.add(f"config.data.{field}", error.rstrip("."),
                  "see the image ops in docs/guides/data.md")
        if "audio" in conventions.model_modalities(config.model):
            error = data.preprocess_error(config, config.data.audio[field], "audio")
            if error:
                c.add(f"config.data.audio.{field}", error.rstrip("."), "use the audio ops of "
                      "input_pipeline/audio.py, ending in log_mel (and spec_augment)")
        if "video" in conventions.model_modalities(config.model):
            error = data.preprocess_error(config, config.data.video[field], "video")
            if error:
                c.add(f"config.data.video.{field}", error.rstrip("."), "use the video ops of "
                      "input_pipeline/video.py, starting with decode_frames")
    described: dict[tuple[str, str], object | None] = {}
    fields: dict[tuple[str, str], str] = {}

    def describe(field: str, spec: str, split: str) -> object | None:
        # Each dataset is read, or reported, once (the probe often reads the train data).
        if (spec, split) not in described:
            fields[spec, split] = field
            try:
                described[spec, split] = data.describe_data(config, spec, split)
            except (ValueError, FileNotFoundError, OSError) as e:
                described[spec, split] = None
                c.add(field, str(e).rstrip("."),
                      "point it at prepared data (docs/guides/data.md)")
        return described[spec, split]

    train = describe("config.data.train", config.data.train, "train") if (
        "train" in roles and config.data.train) else None
    evaluated = {}  # set -> (its data, its probe data)
    if "eval" in roles:
        for s in sets:
            needs_probe = any(evaluators.EVALUATORS[e].needs_probe for e in s.evals)
            probe_field = ("config.data.probe_train" if s.field == "config.data.eval"
                           else s.field)
            evaluated[s] = (describe(s.field, s.data, "test"),
                            describe(probe_field, s.probe_train, "train") if needs_probe
                            else None)
            feature = (s.where or "").removeprefix("not ").strip()
            facts = evaluated[s][0]
            if feature and facts is not None and facts.features and (
                    feature not in facts.features):
                c.add(f"{s.field}.where", f"selects by {feature!r}, a feature {facts.spec} does "
                      f"not store (it has {list(facts.features)})", "name a boolean feature it "
                      "stores (mmjax_shapes: 'unseen_combination'), or unset it")
    wanted = conventions.model_modalities(config.model)
    for key, facts in described.items():
        missing = [m for m in wanted if facts is not None and facts.modalities is not None
                   and m not in facts.modalities]
        if missing:
            c.add(fields[key], f"{facts.spec} holds no {' or '.join(missing)} (its examples have "
                  f"{', '.join(facts.modalities)}) and the model's {missing[0]} tower reads one",
                  f"give data with {missing[0]} (make_shards takes folders and tables of sounds "
                  "as well as images), or a model without that tower "
                  f"(config.model.{missing[0]}_tower=None)")
        video = config.data.video
        span = (video.frames - 1) * video.stride + 1
        if "video" in wanted and facts is not None and facts.video_frames and (
                span > facts.video_frames):
            c.add("config.data.video", f"clips of {video.frames} frames, every "
                  f"{video.stride}{'st' if video.stride == 1 else 'th'}, span {span} stored "
                  f"frames, and the longest video sampled from {facts.spec} stores "
                  f"{facts.video_frames}: every clip would end on a held frame",
                  f"lower config.data.video.frames or .stride to span at most "
                  f"{facts.video_frames}, or convert with a higher make_shards --video_fps")
        if tokenizer is not None and facts is not None and facts.tokenized_with and (
                facts.tokenized_with != text_tokenizers.identity(tokenizer)):
            theirs = facts.tokenized_with
            c.add("config.tokenizer", f"is not the tokenizer {facts.spec} was tokenized with "
                  f"at conversion ({theirs['name']}, context {theirs['context_length']}, "
                  f"{theirs['vocab_size']} ids), so its stored token ids would be wrong here",
                  f"set config.tokenizer to that one (name={theirs['name']}, "
                  f"context_length={theirs['context_length']}, its vocabulary file), or convert "
                  "again with make_shards --tokenizer=YOURS (or without --tokenizer: captions are "
                  "then tokenized while training)")
    if train is not None:
        if tokenizer is not None:
            check_captions(c, tokenizer, train)
        if needs_labels and not train.has_labels:
            c.add("config.losses", f"a loss reads labels and {train.spec} has none",
                  "train on labelled data (make_shards takes a `label` column)")
        if layout and isinstance(config.batch_size, int) and (
                config.batch_size // layout["processes"] > train.num_examples):
            c.add("config.batch_size", f"is larger than the {train.num_examples} examples of "
                  f"{train.spec} (per process)", f"use at most {train.num_examples}")
    if "eval" not in roles:
        return tuple(sets)
    if not sets:
        if config.evals:
            c.notes.append("config.data.eval is empty: no evaluation.")
        return ()
    planned, names = [], {}
    for s in sets:
        facts, probe = evaluated[s]
        if facts is None:
            planned.append(s)
            continue
        runnable = []
        for name in s.evals:
            evaluator = evaluators.EVALUATORS[name]
            if evaluator.datasets and facts.dataset not in evaluator.datasets:
                field = f"config.eval_sets.{s.name}.evals" if s.name else "config.evals"
                c.add(field, f"the {name!r} evaluator judges {', '.join(evaluator.datasets)} "
                      f"only, not {facts.spec}", f"evaluate {facts.spec} without {name!r}, or "
                      f"add an eval set on {evaluator.datasets[0]} for it")
                continue
            why = _unmet_data_need(evaluators.EVALUATORS[name], {"eval": facts, "probe": probe})
            if why is None:
                runnable.append(name)
            else:
                c.notes.append(f"evaluator {name!r} skipped{_on(s)}: {why}.")
        planned.append(dataclasses.replace(s, evals=tuple(runnable)))
        names[planned[-1]] = s.name or facts.name
    check_keep_best_by(c, planned, names)
    return tuple(planned)


def _on(eval_set) -> str:
    return f" on {eval_set.name}" if eval_set.name else ""


def check_keep_best_by(c, sets, names: dict | None = None) -> None:
    """config.keep_best_by must be a metric the planned evaluators log (else the run would stop
    at its first evaluation). `names`: each set's name in metric names, where known."""
    metric = c.config.keep_best_by
    if not metric or not str(metric).startswith("eval/"):
        return
    logged = {}  # set name in metric names -> its metrics
    for s in sets:
        name = (names or {}).get(s, s.name) or "DATASET"
        logged.setdefault(name, set()).update(
            m for e in s.evals for m in evaluators.EVALUATORS[e].metrics)
    parts = str(metric).split("/")
    if len(parts) == 3 and any(parts[2] in metrics and name in (parts[1], "DATASET")
                               for name, metrics in logged.items()):
        return
    choices = " or ".join(f"eval/{name}/{{{', '.join(sorted(metrics))}}}"
                          for name, metrics in logged.items())
    example = next((f"eval/{n}/{sorted(m)[0]}" for n, m in logged.items() if m),
                   "eval/DATASET/METRIC")
    c.add("config.keep_best_by", "is not a metric this run's evaluation logs",
          f"name one of {choices or 'the logged metrics'}, e.g. {example!r}")


def _unmet_data_need(evaluator, facts: dict) -> str | None:
    for need in evaluator.data_needs:
        for role in ("eval", "probe") if evaluator.needs_probe else ("eval",):
            data = facts.get(role)
            if data is None:
                continue
            if need == "labels" and not data.has_labels:
                return (f"{data.spec} has no labels (for your own shards: a `label` column in "
                        "make_shards' input)")
            if need == "class_names" and not data.class_names:
                return f"{data.spec} has no class names"
    return None
