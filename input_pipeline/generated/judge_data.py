"""Training data for the judge's CLIP (mmjax/evaluation/judge.py): real mmjax_shapes images of every
colour-shape pair, the held-out ones too, drawn under the judge's own seed, as mmjax shards.

    python -m input_pipeline.generated.judge_data --out=/tmp/judge_clip_data
    python main.py --config=configs/smoke.py --workdir=/tmp/judge_clip --config.seed=1 \
        --config.data.train=shards:/tmp/judge_clip_data/shards:train
    python -m mmjax.tools.fit_judge --clip_workdir=/tmp/judge_clip --out=/tmp/judge

A CLIP trained on the dataset's own train split has never seen a held-out pair, so it ranks a
real image of one by its caption far worse than a seen one (R-precision 0.615 against 0.814 on
the test split) and cannot tell whether a generator drew it; nor should a judge have trained on
the images the nearest-training-image baseline shows it. These are the images the attribute
classifier learns from (input_pipeline.generated.shapes.render_any_pair), written as PNGs with a
captions.csv under OUT/rendered and converted by make_shards into OUT/shards.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile

from absl import app, flags

from input_pipeline.convert import make_shards
from input_pipeline.generated import builder, shapes
from mmjax import paths


def write_judge_data(out: str, count: int, quiet: bool = False) -> dict:
    """Renders `count` images of the pairs and writes them as shards (OUT/shards); returns
    make_shards' metadata. For a bucket `out` the images are rendered on local disk first (where
    make_shards reads its input) and copied to OUT/rendered beside the shards."""
    local = tempfile.mkdtemp(prefix="mmjax_judge_data_") if paths.is_cloud(out) else out
    rendered = paths.join(local, "rendered")
    paths.makedirs(paths.join(rendered, "images"))
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["image", "caption", "label"])
    for index in range(count):
        example = shapes.render_any_pair(index)
        name = f"images/{index:06d}.png"
        paths.write_bytes(paths.join(rendered, name), builder.encode_png(example["image"]))
        writer.writerow([name, example["caption"], example["label"]])
    paths.write_text(paths.join(rendered, "captions.csv"), table.getvalue())
    metadata = make_shards.make_shards(paths.join(rendered, "captions.csv"),
                                       paths.join(out, "shards"), check_images=False, quiet=quiet)
    if local != out:
        paths.copy_tree(rendered, paths.join(out, "rendered"))
        shutil.rmtree(local)
    return metadata


def main(argv) -> None:
    del argv
    write_judge_data(FLAGS.out, FLAGS.count)  # make_shards names the spec to train on


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "Where the images and shards go (a folder or gs://...).",
                        required=True)
    flags.DEFINE_integer("count", 20_000, "How many images (the judge's classifier: 20,000).")
    FLAGS = flags.FLAGS
    app.run(main)
