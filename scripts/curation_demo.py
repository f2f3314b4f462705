"""Curation on the embedded data: a polluted pool filtered by a smoke CLIP trained on a small
clean seed set, then smoke runs on the filtered and on the unfiltered pool, same steps.

    python scripts/curation_demo.py --out=/tmp/curation --steps=600 --seeds=0,1,2

The pool: new renderings of mmjax_shapes' train distribution (its examples 40,000 on, which the
embedded 20,000 do not hold); `--wrong` of them carry another image's caption, `--duplicates`
more rows are copies of pool images under other names, and `--test_copies` are copies of the
test split's images with their captions. The seed set: 2,000 clean renderings (60,000 on). The
filter keeps the best `--keep_fraction` by the seed CLIP's score and drops copies (cosine
similarity of the image embeddings at least `--duplicate_similarity`). Both pool runs evaluate
on the embedded test split. Prints a table and writes OUT/results.json.
"""

import csv
import json
import os
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import tensorflow as tf
from absl import app, flags

# Run as `python scripts/NAME.py` from anywhere: the project is found beside this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import smoke  # noqa: E402
from input_pipeline import datasets  # noqa: E402
from input_pipeline.convert import filter as curate  # noqa: E402
from input_pipeline.convert import make_shards  # noqa: E402
from input_pipeline.generated import synthetic  # noqa: E402
from mmjax import train  # noqa: E402

flags.DEFINE_string("out", "/tmp/curation", "Where the data, runs and results.json go.")
flags.DEFINE_integer("pool", 6000, "Pool images before the copies.")
flags.DEFINE_float("wrong", 0.25, "Share of the pool whose caption is another image's.")
flags.DEFINE_float("duplicates", 0.05, "Copies of pool images added, as a share of the pool.")
flags.DEFINE_float("test_copies", 0.02, "Copies of test images added, as a share of the pool.")
flags.DEFINE_integer("seed_steps", 400, "Steps of the seed CLIP (on 2,000 clean pairs).")
flags.DEFINE_integer("steps", 600, "Steps of each pool run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the pool runs.")
flags.DEFINE_float("keep_fraction", 0.7, "The filter keeps this share of the best pairs.")
flags.DEFINE_float("duplicate_similarity", 0.999, "Images this similar are copies.")
FLAGS = flags.FLAGS


def write_pool(raw: str, rng) -> dict[str, set]:
    """The polluted pool's files and CSV; the keys of each kind of pollution."""
    written = synthetic.write_captioned_images(raw, FLAGS.pool, image_size=32, first=40_000,
                                               phrasings=("{}",))
    with open(written["csv"]) as f:
        rows = list(csv.DictReader(f))
    wrong = rng.choice(len(rows), int(FLAGS.wrong * len(rows)), replace=False)
    for i in wrong:
        other = rows[rng.integers(len(rows))]["caption"]
        while other == rows[i]["caption"]:
            other = rows[rng.integers(len(rows))]["caption"]
        rows[i]["caption"] = other
    kinds = {"wrong": {rows[i]["image"] for i in wrong}, "duplicate": set(), "test_copy": set()}
    for n, i in enumerate(rng.choice(len(rows), int(FLAGS.duplicates * len(rows)),
                                     replace=False)):
        name = f"images/copy{n:05d}.png"
        shutil.copy(os.path.join(raw, rows[i]["image"]), os.path.join(raw, name))
        rows.append({"image": name, "caption": rows[i]["caption"], "split": "train"})
        kinds["duplicate"].add(name)
    test = datasets.open_source(datasets.parse_spec("tfds:mmjax_shapes:test", "test"), None)
    for n in range(int(FLAGS.test_copies * FLAGS.pool)):
        example = test.decode(tf.constant(test.fetch(np.array([n]))[0]), tf.constant(n, tf.int64))
        name = f"images/test{n:05d}.png"
        with open(os.path.join(raw, name), "wb") as f:
            f.write(example["image"].numpy())
        rows.append({"image": name, "caption": example["captions"].numpy()[0].decode(),
                     "split": "train"})
        kinds["test_copy"].add(name)
    with open(written["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return kinds


def run(workdir: str, data: str, steps: int, seed: int) -> dict:
    config = smoke.get_config()
    config.data.train = data
    config.total_steps, config.seed = steps, seed
    config.eval_every_steps = 0
    config.checkpoint_every_steps = steps
    config.evals = ("retrieval", "zeroshot")
    return train.train_and_evaluate(config, workdir)


def main(argv) -> None:
    del argv
    rng = np.random.default_rng(0)
    out = FLAGS.out
    pool_shards, seed_shards = f"{out}/pool_shards", f"{out}/seed_shards"
    if not os.path.exists(f"{pool_shards}/metadata.json"):
        kinds = write_pool(f"{out}/pool_raw", rng)
        with open(f"{out}/pollution.json", "w") as f:
            json.dump({k: sorted(v) for k, v in kinds.items()}, f)
        make_shards.make_shards(f"{out}/pool_raw/captions.csv", pool_shards, quiet=True)
        seed = synthetic.write_captioned_images(f"{out}/seed_raw", 2000, image_size=32,
                                                first=60_000, phrasings=("{}",))
        make_shards.make_shards(seed["csv"], seed_shards, quiet=True)
    with open(f"{out}/pollution.json") as f:
        kinds = {k: set(v) for k, v in json.load(f).items()}
    if not os.path.exists(f"{out}/seed_clip/eval_results.json"):
        run(f"{out}/seed_clip", f"shards:{seed_shards}:train", FLAGS.seed_steps, 0)
    filtered = f"{out}/filtered"
    metadata = curate.filter_shards(
        pool_shards, filtered, f"{out}/seed_clip", keep_fraction=FLAGS.keep_fraction,
        duplicate_similarity=FLAGS.duplicate_similarity, against=("tfds:mmjax_shapes:test",),
        workers=2, quiet=True)
    table = pq.read_table(f"{filtered}/scores.parquet").to_pydict()
    why = dict(zip(table["key"], table["why"]))
    planted = set().union(*kinds.values())
    good = [k for k in why if k not in planted]
    results = {
        "counts": metadata["filter"]["counts"],
        "wrong_pairs_removed": np.mean([why[k] != "" for k in kinds["wrong"]]),
        "good_pairs_kept": np.mean([why[k] == "" for k in good]),
        "duplicates_removed": np.mean([why[k] == "duplicate" for k in kinds["duplicate"]]),
        "test_copies_removed": np.mean([why[k] == "near_evaluation"
                                        for k in kinds["test_copy"]]),
        "good_pairs_taken_for_copies": int(sum(why[k] in ("duplicate", "near_evaluation")
                                               for k in good)),
        "runs": {},
    }
    for name, data in [("unfiltered", pool_shards), ("filtered", filtered)]:
        for seed in (int(s) for s in FLAGS.seeds):
            metrics = run(f"{out}/{name}_{seed}", f"shards:{data}:train", FLAGS.steps, seed)
            results["runs"][f"{name}_{seed}"] = {
                k: float(metrics[f"eval/mmjax_shapes/{k}"])
                for k in ("i2t_recall@1", "t2i_recall@1", "zeroshot_top1")}
    print(f"pool {results['counts']['input']}: wrong pairs removed "
          f"{results['wrong_pairs_removed']:.1%}, good pairs kept "
          f"{results['good_pairs_kept']:.1%}, "
          f"copies removed {results['duplicates_removed']:.1%}, test copies removed "
          f"{results['test_copies_removed']:.1%}")
    print(f"{'run':<14} {'i2t R@1':>8} {'t2i R@1':>8} {'zero-shot':>10}")
    for name, m in results["runs"].items():
        print(f"{name:<14} {m['i2t_recall@1']:8.4f} {m['t2i_recall@1']:8.4f} "
              f"{m['zeroshot_top1']:10.4f}")
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f, indent=2, default=float)


if __name__ == "__main__":
    app.run(main)
