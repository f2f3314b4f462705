"""Evaluation results in clip_benchmark's JSON form, so that numbers line up with published
tables: one file per eval set and task, WORKDIR/clip_benchmark/<set>_<task>.json, holding
{"dataset", "model", "pretrained", "task", "metrics", "language"} with clip_benchmark's dataset
and metric names (acc1, acc5, mean_per_class_recall; image_retrieval_recall@k, the text-to-image
direction, and text_retrieval_recall@k; lp_acc1, lp_acc5, lp_mean_per_class_recall)."""

from __future__ import annotations

import json

from mmjax import paths

# clip_benchmark task -> {its metric name: mmjax's}.
TASKS = {
    "zeroshot_classification": {"acc1": "zeroshot_top1", "acc5": "zeroshot_top5",
                                "mean_per_class_recall": "zeroshot_mean_per_class"},
    "zeroshot_retrieval": {
        **{f"image_retrieval_recall@{k}": f"t2i_recall@{k}" for k in (1, 5, 10)},
        **{f"text_retrieval_recall@{k}": f"i2t_recall@{k}" for k in (1, 5, 10)}},
    "linear_probe": {"lp_acc1": "linear_probe_top1", "lp_acc5": "linear_probe_top5",
                     "lp_mean_per_class_recall": "linear_probe_mean_per_class"},
}


def records(set_name: str, benchmark_name: str, metrics: dict[str, float], *, model: str,
            pretrained: str) -> dict[str, dict]:
    """Task -> clip_benchmark record, for the tasks whose metrics `metrics` has (as logged:
    eval/<set_name>/<metric>)."""
    logged = {name.split("/")[-1]: value for name, value in metrics.items()
              if name.startswith(f"eval/{set_name}/")}
    found = {}
    for task, names in TASKS.items():
        values = {theirs: float(logged[ours]) for theirs, ours in names.items() if ours in logged}
        if values:
            found[task] = {"dataset": benchmark_name, "model": model, "pretrained": pretrained,
                           "task": task, "metrics": values, "language": "en"}
    return found


def write(workdir: str, eval_sets: list[tuple[str, str]], metrics: dict[str, float], *,
          model: str, step: int) -> list[str]:
    """Writes the files of each (set name, clip_benchmark dataset name); returns their paths."""
    directory = paths.join(workdir, "clip_benchmark")
    written = []
    for set_name, benchmark_name in eval_sets:
        for task, record in records(
            set_name,
            benchmark_name,
            metrics,
            model=model,
            pretrained=paths.join(workdir, "checkpoints", str(step)),
        ).items():
            paths.makedirs(directory)
            path = paths.join(directory, f"{set_name}_{task}.json")
            paths.write_text(path, json.dumps(record, indent=2))
            written.append(path)
    return written
