"""Loader benchmark: images/s for JPEG decode + random resized crop to 224 + CLIP BPE tokenising.

    python -m input_pipeline.bench --workdir=/tmp/loader_bench --cores=0 \
        --open_clip_python=/path/to/venv_with_open_clip/bin/python

Generates the images once (JPEG, 512x384, with texture so they decode like photos), writes them
as mmjax shards and as open_clip's CSV, then times mmjax's train pipeline and, if
--open_clip_python is given, open_clip's own training loader (open_clip_train.data's CSV path,
scripts/bench_open_clip_loader.py) on the same files, each pinned to the same cores. Prints a
table and writes WORKDIR/loader_bench.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP_BPE = os.path.join(REPO_ROOT, "tests", "fixtures", "bpe_simple_vocab_16e6.txt.gz")


def prepare(workdir: str, count: int, width: int = 512, height: int = 384) -> tuple[str, str]:
    """(shards directory, open_clip CSV path); written once."""
    from PIL import Image

    from input_pipeline import make_shards, shapes

    images = os.path.join(workdir, "images")
    csv_path = os.path.join(workdir, "open_clip.csv")
    if not os.path.exists(csv_path):
        os.makedirs(images, exist_ok=True)
        rng = np.random.default_rng(0)
        rows = []
        for index in range(count):
            example = shapes.render_example("train", index)
            pixels = np.asarray(Image.fromarray(example["image"]).resize((width, height)),
                                np.float32)
            pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
            path = os.path.join(images, f"{index:06d}.jpg")
            Image.fromarray(pixels).save(path, "JPEG", quality=90)
            rows.append((path, "a photo of " + example["caption"]))
        with open(csv_path + ".tmp", "w") as f:  # open_clip's default: tab-separated
            f.write("filepath\ttitle\n")
            f.writelines(f"{p}\t{c}\n" for p, c in rows)
        with open(os.path.join(workdir, "mmjax.csv"), "w") as f:
            f.write("image,caption\n")
            f.writelines(f"{os.path.relpath(p, workdir)},{c}\n" for p, c in rows)
        os.replace(csv_path + ".tmp", csv_path)
    shards_dir = os.path.join(workdir, "shards")
    make_shards.make_shards(os.path.join(workdir, "mmjax.csv"), shards_dir, quiet=True)
    return shards_dir, csv_path


FAST = "decode_jpeg_and_inception_crop(scale=(0.9, 1.0))"
VARIANTS = {
    # uint8 out; the model normalises on the device (mmjax's default).
    "mmjax (tf.data, ArrayRecord)": FAST,
    # float32 normalised on the host, as open_clip's loader outputs.
    "mmjax, normalize on host": FAST + "|normalize",
}


def time_mmjax(shards_dir: str, preprocess: str, *, batch_size: int, batches: int,
               warmup: int) -> float:
    import ml_collections

    from input_pipeline import pipeline
    from mmjax import tokenizers

    config = ml_collections.ConfigDict(dict(
        batch_size=batch_size, seed=0,
        data=dict(train=f"shards:{shards_dir}:train", image_size=224, normalization="clip",
                  train_preprocess=preprocess),
    ))
    tokenizer = tokenizers.ClipBpeTokenizer(77, CLIP_BPE)
    iterator = pipeline.train_batches(config, tokenizer)
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    elapsed = time.perf_counter() - started
    assert batch["image"].shape == (batch_size, 224, 224, 3) and batch["tokens"].shape[1] == 77
    return batches * batch_size / elapsed


def main(argv) -> None:
    del argv
    cores = [int(c) for c in FLAGS.cores.split(",")] if FLAGS.cores else sorted(
        os.sched_getaffinity(0))
    shards_dir, csv_path = prepare(FLAGS.workdir, FLAGS.num_images)
    results = {"cores": cores, "batch_size": FLAGS.batch_size, "num_images": FLAGS.num_images}
    if FLAGS.child:
        print(json.dumps({"images_per_sec": time_mmjax(
            shards_dir, FLAGS.preprocess, batch_size=FLAGS.batch_size, batches=FLAGS.batches,
            warmup=FLAGS.warmup)}))
        return
    # Each loader runs in its own process pinned to the cores (TensorFlow sizes its thread pools
    # from the CPUs it may use).
    pin = ["taskset", "-c", ",".join(map(str, cores))]
    for name, preprocess in VARIANTS.items():
        command = pin + [sys.executable, "-m", "input_pipeline.bench", "--child",
                         f"--workdir={FLAGS.workdir}", f"--num_images={FLAGS.num_images}",
                         f"--batch_size={FLAGS.batch_size}", f"--batches={FLAGS.batches}",
                         f"--warmup={FLAGS.warmup}", f"--preprocess={preprocess}"]
        output = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True,
                                text=True)
        results[name] = json.loads(output.stdout.strip().splitlines()[-1])["images_per_sec"]
    if FLAGS.open_clip_python:
        command = pin + [FLAGS.open_clip_python,
                         os.path.join(REPO_ROOT, "scripts", "bench_open_clip_loader.py"),
                         f"--csv={csv_path}", f"--batch_size={FLAGS.batch_size}",
                         f"--batches={FLAGS.batches}", f"--warmup={FLAGS.warmup}",
                         f"--workers={FLAGS.open_clip_workers}"]
        output = subprocess.run(command, check=True, capture_output=True, text=True)
        results["open_clip"] = json.loads(output.stdout.strip().splitlines()[-1])["images_per_sec"]
        results["open_clip_workers"] = FLAGS.open_clip_workers
    print(f"\nLoader: JPEG 512x384 -> decode + random resized crop 224 (scale 0.9-1) + CLIP BPE "
          f"(77 tokens); batch {FLAGS.batch_size}; cores {cores}")
    print(f"{'loader':<36}{'images/s':>10}{'per core':>10}{'vs open_clip':>14}")
    for name in [*VARIANTS, "open_clip"]:
        if name in results:
            label = (f"open_clip (CSV, workers={FLAGS.open_clip_workers})" if name == "open_clip"
                     else name)
            ratio = (f"{results[name] / results['open_clip']:.2f}x" if "open_clip" in results
                     else "")
            print(f"{label:<36}{results[name]:>10.1f}{results[name] / len(cores):>10.1f}"
                  f"{ratio:>14}")
    with open(os.path.join(FLAGS.workdir, "loader_bench.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", "/tmp/mmjax_loader_bench", "Images, shards and results.")
    flags.DEFINE_string("cores", None, "Cores to pin both loaders to, e.g. '0' (default: all).")
    flags.DEFINE_integer("num_images", 2000, "Images to generate.")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_integer("batches", 10, "Timed batches.")
    flags.DEFINE_integer("warmup", 2, "Batches before timing.")
    flags.DEFINE_string("open_clip_python", None, "A Python with open_clip_torch[training].")
    flags.DEFINE_integer("open_clip_workers", 0, "open_clip DataLoader workers (0: in the main "
                         "process, the fair single-core setting).")
    flags.DEFINE_bool("child", False, "Internal: time mmjax in this process.")
    flags.DEFINE_string("preprocess", FAST, "Internal: the child's preprocessing ops.")
    FLAGS = flags.FLAGS
    app.run(main)
