"""How much of the judge's reading a tokenizer's reconstructions keep (the bar: 95 % of real images'
reading).

    python -m mmjax.tools.judge_reconstructions --tokenizer_workdir=/tmp/mmjax_tokenizer \
        --judge=/tmp/mmjax_judge

Reads the first --count images of --images with the tokenizer run's eval preprocessing,
reconstructs them (tokenize, then detokenize) and has the judge (mmjax/evaluation/judge.py, fitted
by mmjax.tools.fit_judge) read every attribute (and colour-shape: both right) on the real images,
on the reconstructions and on the real images blurred by [w, 1 - 2w, w] along each axis for
each --blur w (how much blur the judge itself tolerates). Prints a table and writes it to
--results as JSON. (Flag names apart from fit_judge's: absl flags are global, and both load in
one test process.)
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from mmjax import inference, paths
from mmjax.evaluation import judge, suite

flags.DEFINE_string("tokenizer_workdir", None, "An image tokenizer run's workdir.")
flags.DEFINE_string("judge", None, "A judge written by mmjax.tools.fit_judge.")
flags.DEFINE_string("images", "tfds:mmjax_shapes:test", "Real captioned images.")
flags.DEFINE_integer("count", 500, "How many of them.")
flags.DEFINE_list("blur", ["0.2", "0.333"], "Blur weights w of the real-image rows.")
flags.DEFINE_string("results", None, "Where the JSON goes (default: TOKENIZER_WORKDIR/"
                    "judged_reconstructions.json).")
flags.mark_flags_as_required(["tokenizer_workdir", "judge"])
FLAGS = flags.FLAGS


def measure(tokenizer_workdir: str, judge_dir: str, data: str, count: int,
            blur_weights=(0.2, 0.333)) -> dict:
    """{"accuracy": {row: {attribute: accuracy, "pixel_mse": ...}}, "kept": {attribute:
    reconstructed / real}} for the first `count` images of `data`."""

    tokenizer = inference.load(tokenizer_workdir)
    images, captions = suite.real_images(tokenizer.config, tokenizer.tokenizer, data, count)
    judge_model = judge.load(judge_dir)
    rows = {"real": images,
            **{f"real blurred w={w:g}": judge.blurred(images, w) for w in blur_weights},
            "reconstructed": tokenizer.detokenize(tokenizer.tokenize(images))}
    table = {}
    for name, row_images in rows.items():
        _, right = judge.read_as_captioned(judge_model, row_images, captions)
        table[name] = {a: float(np.mean(v)) for a, v in right.items()}
        table[name]["pixel_mse"] = float(np.mean((row_images.astype(np.float64) - images) ** 2))
    kept = {a: table["reconstructed"][a] / max(table["real"][a], 1e-9)
            for a in ("color_shape", *judge.ATTRIBUTES)}
    return {"examples": len(images), "images": data, "judge": judge_dir, "accuracy": table,
            "kept": kept}


def main(argv) -> None:
    del argv

    result = measure(FLAGS.tokenizer_workdir, FLAGS.judge, FLAGS.images, FLAGS.count,
                     [float(w) for w in FLAGS.blur])
    columns = tuple(result["kept"])
    print("| images | " + " | ".join(columns) + " | pixel MSE |")
    print("| --- " * (len(columns) + 2) + "|")
    for name, row in result["accuracy"].items():
        print(f"| {name} | " + " | ".join(f"{row[a]:.3f}" for a in columns)
              + f" | {row['pixel_mse']:.1f} |")
    print("Reconstructions keep of the real images' reading: "
          + ", ".join(f"{a} {v:.0%}" for a, v in result["kept"].items()))
    out = FLAGS.results or paths.join(FLAGS.tokenizer_workdir, "judged_reconstructions.json")
    paths.write_text(out, json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
