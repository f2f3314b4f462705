"""Evaluation datasets: which datasets a run evaluates, with which evaluators and how often.

A run evaluates `config.data.eval` with `config.evals` every `config.eval_every_steps`, unless
`config.eval_sets` names its own sets, big_vision style; each set then has its data, its
evaluators, its interval and its caption and probe settings, and logs under its own name:

    config.eval_sets.imagenet = dict(data="tfds:imagenet2012:validation",
                                     evals=("zeroshot", "linear_probe"), every_steps=5000)
    config.eval_sets.coco = dict(data="tfds:coco_captions:test", evals=("retrieval",),
                                 captions_per_image=5)

logs `eval/imagenet/zeroshot_top1` and `eval/coco/i2t_recall@1`. `where="unseen_combination"`
evaluates the examples whose boolean feature of that name is true (held-out attribute pairs).
Fields a set leaves out take the run-wide value (config.evals, config.eval_every_steps,
config.data.eval_captions_per_image, config.data.probe_train and probe_examples).
"""

from __future__ import annotations

import dataclasses

from mmjax import conventions


@dataclasses.dataclass(frozen=True)
class EvalSet:
    # Metric prefix: eval/<name>/...; None: the dataset's short name (the single-set form).
    name: str | None
    data: str
    evals: tuple[str, ...]
    every_steps: int
    captions_per_image: int = 1
    # Evaluate the first max_examples only (None: the whole split).
    max_examples: int | None = None
    probe_train: str | None = None
    probe_examples: int = 5000
    # Only the examples whose stored boolean feature of this name is true ("not NAME": false),
    # e.g. "unseen_combination": the attribute pairs held out of training.
    where: str | None = None
    # The config field the set comes from, for the preflight's messages.
    field: str = "config.data.eval"

    def due(self, step: int, is_last: bool) -> bool:
        return is_last or bool(self.every_steps and step % self.every_steps == 0)


# The fields an entry of config.eval_sets may set; `data` is required.
FIELDS = ("data", "evals", "every_steps", "captions_per_image", "max_examples", "probe_train",
          "probe_examples", "where")


def eval_sets(config) -> tuple[EvalSet, ...]:
    """The run's evaluation sets, in config order (one from config.data.eval by default)."""
    configured = config.get("eval_sets") or {}
    common = dict(evals=tuple(config.evals), every_steps=config.eval_every_steps,
                  captions_per_image=config.data.eval_captions_per_image,
                  # A mixture trains only: the probe learns on its first source.
                  probe_train=config.data.probe_train or conventions.first_source(
                      config.data.train),
                  probe_examples=config.data.probe_examples)
    if not configured:
        return (EvalSet(name=None, data=config.data.eval, **common),) if config.data.eval else ()
    sets = []
    for name, entry in configured.items():
        fields = {k: v for k, v in dict(entry).items() if k in FIELDS and v is not None}
        merged = {**common, **fields}
        merged["evals"] = tuple(merged["evals"])
        merged.setdefault("data", "")
        sets.append(EvalSet(name=name, field=f"config.eval_sets.{name}", **merged))
    return tuple(sets)
