"""The evaluation report: WORKDIR/eval_report.md with one table per evaluator and PNG figures.

Figures (written next to the report, under WORKDIR/report/):
- retrieval examples: text queries with their top-5 images and image queries with their top-5
  captions, the correct one marked in green;
- the image-text similarity matrix of the first 32 pairs (matches on the diagonal);
- zero-shot accuracy per class;
- training curves from WORKDIR/metrics.jsonl;
- text-to-image: images made for eval captions, one column per source (real, tokenizer
  reconstruction, nearest training image, each guidance scale), and the judge's table.
Written by `python main.py --mode=eval`; needs matplotlib, imported only here.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from mmjax import conventions, paths

MATCH, MISS = "#1a9850", "#d73027"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


GENERATION_SOURCE = re.compile(r"(real|reconstructed|(?:reranked_)?(?:nearest_training|"
                               r"unconditional)|(?:generated|reranked)_g[0-9.]+)_(.*)")


def _evaluator_of(metric: str) -> str:
    name = metric.split("/")[-1]
    if GENERATION_SOURCE.fullmatch(name):
        return "generation"
    if re.match(r"[a-z]2[a-z]_recall@|num_(candidates|texts)$|caption_chance@", name):
        return "retrieval"
    for part, evaluator in (("zeroshot", "zero-shot"), ("caption", "captioning"),
                            ("itm", "image-text matching"), ("classification", "classification"),
                            ("linear_probe", "linear probe")):
        if any(name.startswith(modality + part)
               for modality in conventions.METRIC_PREFIXES.values()):
            return evaluator
    return "other"


def retrieval_figure(plt, path: str, details: dict, thumbnails: np.ndarray, captions: list):
    queries = details["queries"]
    rows = len(queries)
    # Right answers as recall@k counts them: the query's own pair or a word-for-word copy.
    right = lambda index, query: index == query or captions[index] == captions[query]
    fig, axes = plt.subplots(2 * rows, 6, figsize=(13, 2.1 * 2 * rows))
    for row, query in enumerate(queries):
        # Text -> image: the caption, then the five best images.
        ax = axes[row, 0]
        ax.axis("off")
        ax.text(0.0, 0.5, "\n".join(_wrap(captions[query], 22)), va="center", fontsize=9)
        ax.set_title("text query" if row == 0 else "", fontsize=9, loc="left")
        for rank, index in enumerate(details["t2i_top5"][row]):
            ax = axes[row, rank + 1]
            ax.imshow(thumbnails[index], interpolation="nearest")
            _frame(ax, MATCH if right(index, query) else MISS)
            ax.set_title(f"#{rank + 1}" + (" (correct)" if right(index, query) else ""),
                         fontsize=8)
        # Image -> text: the image, then the five best captions.
        ax = axes[rows + row, 0]
        ax.imshow(thumbnails[query], interpolation="nearest")
        _frame(ax, "black")
        ax.set_title("image query" if row == 0 else "", fontsize=9, loc="left")
        for rank, index in enumerate(details["i2t_top5"][row]):
            ax = axes[rows + row, rank + 1]
            ax.axis("off")
            ax.text(0.0, 0.5, f"#{rank + 1}\n" + "\n".join(_wrap(captions[index], 20)),
                    va="center", fontsize=8, color=MATCH if right(index, query) else MISS)
    fig.suptitle("Retrieval: top-5 for each query (green: the query's own pair, or another "
                 "image's word-for-word identical caption, as recall@k counts them)", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _frame(ax, color):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(3)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def generation_figure(plt, path: str, captions: list[str], images: dict[str, np.ndarray],
                      shown: int = 8) -> None:
    """A row per caption, a column per source of images made for it."""
    rows, columns = min(shown, len(captions)), len(images)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns + 2.2, 1.3 * rows),
                             squeeze=False)
    for column, (source, pictures) in enumerate(images.items()):
        axes[0, column].set_title(source.replace("_", " "), fontsize=7)
        for row in range(rows):
            axes[row, column].imshow(pictures[row], interpolation="nearest")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
    for row in range(rows):
        axes[row, 0].set_ylabel("\n".join(_wrap(captions[row], 18)), fontsize=6, rotation=0,
                                ha="right", va="center")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def generation_table(metrics: dict[str, float]) -> list[str]:
    """The judge's numbers as a table: a row per source, a column per measure."""
    table: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        match = GENERATION_SOURCE.fullmatch(name.split("/")[-1])
        if match:
            table.setdefault(match.group(1), {})[match.group(2)] = value
    measures = list(dict.fromkeys(m for row in table.values() for m in row))
    return ([f"| source | {' | '.join(measures)} |", "|" + " --- |" * (len(measures) + 1)]
            + [f"| {source} | " + " | ".join(_format(row.get(m, float("nan")))
                                               for m in measures) + " |"
               for source, row in table.items()])


def similarity_figure(plt, path: str, similarity: np.ndarray):
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    image = ax.imshow(similarity, cmap="viridis")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_xlabel("text index")
    ax.set_ylabel("image index")
    ax.set_title(f"Image-text similarity, first {len(similarity)} pairs\n(matches on the diagonal)",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def per_class_figure(plt, path: str, class_names: list, accuracy: list, shown: int = 40):
    """Classes the eval split has, by accuracy; past `shown` of them, the lowest and highest."""
    accuracy = np.asarray(accuracy, np.float64)
    present = np.nonzero(~np.isnan(accuracy))[0]
    order = present[np.argsort(accuracy[present], kind="stable")]
    title = "Zero-shot accuracy per class"
    if len(order) > shown:
        title += f" ({shown // 2} lowest and {shown // 2} highest of {len(order)})"
        order = np.concatenate([order[:shown // 2], order[-(shown // 2):]])
    fig, ax = plt.subplots(figsize=(6.5, max(3.0, 0.22 * len(order) + 1)))
    ax.barh(np.arange(len(order)), accuracy[order], color="#4575b4")
    ax.set_yticks(np.arange(len(order)), [class_names[i] for i in order], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("zero-shot accuracy")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def curves_figure(plt, path: str, history: list[dict]) -> bool:
    train = [(row["step"], row["train/loss"]) for row in history if "train/loss" in row]
    eval_names = sorted(
        {
            k
            for row in history
            for k in row
            if k.startswith("eval/") and not k.endswith(("seconds", "num_candidates"))
        }
    )
    if not train:
        return False
    panels = 1 + (1 if eval_names else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.8), squeeze=False)
    steps, values = zip(*train)
    axes[0, 0].plot(steps, values, color="#4575b4")
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("train/loss")
    axes[0, 0].set_title("Training loss", fontsize=10)
    if eval_names:
        ax = axes[0, 1]
        for name in eval_names:
            points = [(row["step"], row[name]) for row in history if name in row]
            if all(0.0 <= v <= 1.0 for _, v in points):
                ax.plot(*zip(*points), marker="o", markersize=3, label=name.split("/")[-1])
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.set_title("Held-out metrics", fontsize=10)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def write_report(workdir: str, *, step: int, metrics: dict, details: dict,
                 config_name: str = "", set_name: str = "") -> str:
    """Writes WORKDIR/eval_report.md (eval_report_NAME.md for a further eval set) and its
    figures; returns the report's path."""
    prefix = f"{set_name}_" if set_name else ""
    plt = _pyplot()
    figures_dir = paths.join(workdir, "report")
    paths.makedirs(figures_dir)
    evaluator_details = details.get("details", {})
    lines = [f"# Evaluation report: {config_name or paths.basename(workdir)}", "",
             f"Checkpoint step {step}, dataset `{details.get('dataset', '')}`, "
             f"{len(details.get('labels', []))} examples. All numbers: `eval_results.json`.", ""]

    groups: dict[str, list[tuple[str, float]]] = {}
    for name, value in metrics.items():
        if not name.endswith("/seconds"):
            groups.setdefault(_evaluator_of(name), []).append((name.split("/")[-1], value))
    for group, rows in groups.items():
        lines += [f"## {group}", ""]
        if group == "generation":
            lines += [
                "Judged by a CLIP of another seed and attribute probes fitted on real "
                "training images (mmjax/evaluation/judge.py); seen / held_out: captions whose "
                "colour-shape pair training has / lacks; r_precision among 100 captions "
                "(chance 0.01); frechet_distance and kid on the judge's embeddings "
                "against real training images (not Inception FID; `real` is the "
                "real-vs-real baseline).",
                "",
            ]
            lines += generation_table(dict(rows)) + [""]
            if "generation" in evaluator_details:
                shown = evaluator_details["generation"]
                generation_figure(plt, paths.join(figures_dir, f"{prefix}generation.png"),
                                  shown["captions"], shown["images"])
                lines += [f"![generated images](report/{prefix}generation.png)", ""]
            continue
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_format(value)} |" for name, value in rows]
        lines.append("")
        if group == "retrieval" and "retrieval" in evaluator_details:
            retrieval = evaluator_details["retrieval"]
            retrieval_figure(plt, paths.join(figures_dir, f"{prefix}retrieval_examples.png"),
                             retrieval, details["thumbnails"], details["captions"])
            similarity_figure(plt, paths.join(figures_dir, f"{prefix}similarity.png"),
                              retrieval["similarity"])
            lines += [f"![retrieval examples](report/{prefix}retrieval_examples.png)", "",
                      f"![similarity matrix](report/{prefix}similarity.png)", ""]
        if group == "captioning" and "captioning" in evaluator_details:
            lines += ["| reference | generated |", "| --- | --- |"]
            lines += [f"| {reference} | {generated} |"
                      for reference, generated in evaluator_details["captioning"]["examples"]]
            lines.append("")
        for key, zeroshot in evaluator_details.items():  # zeroshot, audio_zeroshot
            if group == "zero-shot" and key.endswith("zeroshot"):
                figure = f"{prefix}{key}_per_class.png"
                per_class_figure(plt, paths.join(figures_dir, figure), zeroshot["class_names"],
                                 zeroshot["per_class_accuracy"])
                lines += [f"![{key} accuracy per class](report/{figure})", ""]

    history_path = paths.join(workdir, "metrics.jsonl")
    if paths.exists(history_path):
        history = [json.loads(line) for line in paths.read_text(history_path).splitlines()
                   if line.strip()]
        if curves_figure(plt, paths.join(figures_dir, f"{prefix}training_curves.png"), history):
            lines += ["## training", "",
                      f"![training curves](report/{prefix}training_curves.png)", ""]
    path = paths.join(workdir, f"eval_report{'_' + set_name if set_name else ''}.md")
    paths.write_text(path, "\n".join(lines))
    return path


def _save(fig, path: str) -> None:
    with paths.Path(path).open("wb") as f:
        fig.savefig(f, dpi=90, format="png")


def _format(value) -> str:
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
