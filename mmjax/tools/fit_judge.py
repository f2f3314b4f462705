"""Fit a judge of generated mmjax_shapes images (mmjax/judge.py) on real training images.

    python main.py --config=configs/smoke.py --workdir=/tmp/judge_clip --config.seed=1
    python -m mmjax.tools.fit_judge --clip_workdir=/tmp/judge_clip --out=/tmp/judge

Reads the first --examples images of --data with the CLIP run's own eval preprocessing (so at
its image size), trains the attribute classifier on them (a head each for colour, shape, count,
size and position, read from the captions), after checking it on a tenth kept out, and writes
OUT/judge.json (the CLIP for R-precision, that check's accuracies) and OUT/judge.npz (the
classifier and the images, which the nearest-training-image baseline draws from). Point a
text-to-image run at it with --config.judge.workdir=OUT. The CLIP should be trained with another
seed than anything it judges, on real images only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import app, flags

flags.DEFINE_string("clip_workdir", None, "A CLIP run's workdir (trained with its own seed).")
flags.DEFINE_string("out", None, "Where the judge goes (a folder; gs:// works).")
flags.DEFINE_string("data", "tfds:mmjax_shapes:train", "Real captioned images to fit on.")
flags.DEFINE_integer("examples", 20000, "How many of them.")
flags.DEFINE_integer("steps", 1500, "Training steps of the attribute classifier (batch 128).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: the CLIP run's).")
flags.mark_flags_as_required(["clip_workdir", "out"])
FLAGS = flags.FLAGS


def real_images(config, tokenizer, data: str, examples: int):
    """(uint8 images, captions) of a split, as the run's eval pipeline reads them."""
    from input_pipeline import pipeline
    from mmjax import eval_sets

    eval_set = dataclasses.replace(eval_sets.eval_sets(config)[0], data=data, name="judge",
                                   max_examples=examples, where=None, captions_per_image=1)
    batches = pipeline.eval_data(config, tokenizer, eval_set, global_batch_size=250).batches()
    images, tokens = [], []
    for batch in batches:
        keep = batch["valid"].astype(bool)
        images.append(batch["image"][keep])
        tokens.append(batch["tokens"][keep])
    return np.concatenate(images), [tokenizer.decode(row) for row in np.concatenate(tokens)]


def main(argv) -> None:
    del argv
    from mmjax import inference, judge

    clip = inference.load(FLAGS.clip_workdir)
    config = clip.config
    if FLAGS.tfds_data_dir:
        config.data.tfds_data_dir = FLAGS.tfds_data_dir
    images, captions = real_images(config, clip.tokenizer, FLAGS.data, FLAGS.examples)
    if images.dtype != np.uint8:
        raise ValueError(f"{FLAGS.data} gives {images.dtype} images; the judge keeps uint8 ones.")
    arrays, accuracy = judge.fit(images, captions, steps=FLAGS.steps)
    judge.save(FLAGS.out, arrays, clip_workdir=FLAGS.clip_workdir, data=FLAGS.data,
               check_accuracy=accuracy)
    print("Accuracy on the real images kept out of training:",
          ", ".join(f"{a} {v:.3f}" for a, v in accuracy.items()))
    print(f"Judge written to {FLAGS.out}: trained on {len(images)} real images of {FLAGS.data}.")


if __name__ == "__main__":
    app.run(main)
