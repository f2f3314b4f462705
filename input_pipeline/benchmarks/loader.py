"""Loader benchmark: images/s for JPEG decode + random resized crop to 224 + CLIP BPE tokenising.

    python -m input_pipeline.benchmarks.loader --workdir=/tmp/loader_bench --cores=0 \
        --open_clip_python=/path/to/venv_with_open_clip/bin/python [--source=webdataset]

--source=csv: generates the images once (JPEG, 512x384, with texture so they decode like
photos), writes them as mmjax shards and as open_clip's CSV. --source=webdataset: the data users
have: JPEGs at 256 on the shorter side (341x256, quality 95, as img2dataset writes them for CLIP
training) in img2dataset's webdataset tars, converted by make_shards (with and without the
captions' tokens stored at conversion). Then times mmjax's train pipeline and, if
--open_clip_python is given, open_clip's own training loader (open_clip_train.data's CSV or
webdataset path, scripts/bench_open_clip_loader.py) on the same files, each pinned to the same
cores. Prints a table and writes WORKDIR/loader_bench_SOURCE.json.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np

from input_pipeline import pipeline
from input_pipeline.convert import make_shards
from input_pipeline.generated import shapes
from mmjax import text_tokenizers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIP_BPE = os.path.join(REPO_ROOT, "tests", "fixtures", "bpe_simple_vocab_16e6.txt.gz")


def prepare(workdir: str, count: int, width: int = 512, height: int = 384) -> tuple[str, str]:
    """(shards directory, open_clip CSV path); written once."""

    images = os.path.join(workdir, "images")
    csv_path = os.path.join(workdir, "open_clip.csv")
    if not os.path.exists(csv_path):
        os.makedirs(images, exist_ok=True)
        rng = np.random.default_rng(0)
        rows = []
        for index in range(count):
            jpeg, caption = textured_jpeg(index, width, height, 90, rng)
            path = os.path.join(images, f"{index:06d}.jpg")
            with open(path, "wb") as f:
                f.write(jpeg)
            rows.append((path, caption))
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


def textured_jpeg(index: int, width: int, height: int, quality: int, rng) -> tuple[bytes, str]:
    """An embedded-dataset image resized to width x height with noise (so it decodes like a
    photo), as JPEG bytes, and its caption."""
    from PIL import Image

    example = shapes.render_example("train", index)
    pixels = np.asarray(Image.fromarray(example["image"]).resize((width, height)), np.float32)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "JPEG", quality=quality)
    return encoded.getvalue(), "a photo of " + example["caption"]


def prepare_webdataset(workdir: str, count: int, per_tar: int = 250) -> tuple[dict, str]:
    """({variant: shards directory}, open_clip's brace pattern of the tars); written once.

    img2dataset's layout: KEY.jpg, KEY.txt and KEY.json per sample, 341x256 JPEGs (the shorter
    side resized to 256, quality 95)."""

    tars = os.path.join(workdir, "tars")
    num_tars = -(-count // per_tar)
    pattern = os.path.join(tars, f"{{{0:05d}..{num_tars - 1:05d}}}.tar")
    stats = lambda shard: os.path.join(tars, f"{shard:05d}_stats.json")
    if not os.path.exists(stats(num_tars - 1)):
        os.makedirs(tars, exist_ok=True)
        rng = np.random.default_rng(0)
        for shard in range(num_tars):
            indices = range(shard * per_tar, min(count, (shard + 1) * per_tar))
            with tarfile.open(os.path.join(tars, f"{shard:05d}.tar"), "w") as tar:
                for index in indices:
                    jpeg, caption = textured_jpeg(index, 341, 256, 95, rng)
                    key = f"{index:09d}"
                    meta = json.dumps({"key": key, "caption": caption}).encode()
                    for name, data in ((f"{key}.jpg", jpeg), (f"{key}.txt", caption.encode()),
                                       (f"{key}.json", meta)):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            with open(stats(shard), "w") as f:  # img2dataset's sidecar, which readers skip
                json.dump({"count": len(indices)}, f)
    shards = {"tokenizing while training": os.path.join(workdir, "shards"),
              "tokens stored by make_shards": os.path.join(workdir, "shards_tokens")}
    make_shards.make_shards(tars, shards["tokenizing while training"], quiet=True)
    make_shards.make_shards(tars, shards["tokens stored by make_shards"], quiet=True,
                            tokenizer=CLIP_BPE_TOKENIZER)
    return shards, pattern


CLIP_BPE_TOKENIZER = {"name": "clip_bpe", "context_length": 77, "vocabulary_file": CLIP_BPE}
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

    config = ml_collections.ConfigDict(dict(
        batch_size=batch_size, seed=0,
        data=dict(train=f"shards:{shards_dir}:train", image_size=224, normalization="clip",
                  train_preprocess=preprocess),
        # The loader feeds an image-text model: images and token rows.
        model=dict(image_tower=dict(name="vit"), text_tower=dict(name="transformer")),
    ))
    tokenizer = text_tokenizers.build_tokenizer(ml_collections.ConfigDict(CLIP_BPE_TOKENIZER))
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
    if FLAGS.child:
        print(json.dumps({"images_per_sec": time_mmjax(
            FLAGS.shards_dir, FLAGS.preprocess, batch_size=FLAGS.batch_size,
            batches=FLAGS.batches, warmup=FLAGS.warmup)}))
        return
    if FLAGS.source == "webdataset":
        shards, pattern = prepare_webdataset(FLAGS.workdir, FLAGS.num_images)
        contenders = {f"mmjax, {label}": (directory, FAST) for label, directory in shards.items()}
        open_clip_input = [f"--wds={pattern}", f"--num_samples={FLAGS.num_images}"]
        what = "webdataset tars of 341x256 JPEGs (q95)"
    else:
        shards_dir, csv_path = prepare(FLAGS.workdir, FLAGS.num_images)
        contenders = {name: (shards_dir, preprocess) for name, preprocess in VARIANTS.items()}
        open_clip_input = [f"--csv={csv_path}"]
        what = "JPEG 512x384 files"
    results = {"source": FLAGS.source, "cores": cores, "batch_size": FLAGS.batch_size,
               "num_images": FLAGS.num_images}
    # Each loader runs in its own process pinned to the cores (TensorFlow sizes its thread pools
    # from the CPUs it may use).
    pin = ["taskset", "-c", ",".join(map(str, cores))]
    for name, (shards_dir, preprocess) in contenders.items():
        command = pin + [sys.executable, "-m", "input_pipeline.benchmarks.loader", "--child",
                         f"--shards_dir={shards_dir}", f"--batch_size={FLAGS.batch_size}",
                         f"--batches={FLAGS.batches}", f"--warmup={FLAGS.warmup}",
                         f"--preprocess={preprocess}"]
        output = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True,
                                text=True)
        results[name] = json.loads(output.stdout.strip().splitlines()[-1])["images_per_sec"]
    if FLAGS.open_clip_python:
        command = pin + [FLAGS.open_clip_python,
                         os.path.join(REPO_ROOT, "scripts", "bench_open_clip_loader.py"),
                         *open_clip_input, f"--batch_size={FLAGS.batch_size}",
                         f"--batches={FLAGS.batches}", f"--warmup={FLAGS.warmup}",
                         f"--workers={FLAGS.open_clip_workers}"]
        output = subprocess.run(command, check=True, capture_output=True, text=True)
        results["open_clip"] = json.loads(output.stdout.strip().splitlines()[-1])["images_per_sec"]
        results["open_clip_workers"] = FLAGS.open_clip_workers
    print(f"\nLoader: {what} -> decode + random resized crop 224 (scale 0.9-1) + CLIP BPE "
          f"(77 tokens); batch {FLAGS.batch_size}; cores {cores}")
    print(f"{'loader':<44}{'images/s':>10}{'per core':>10}{'vs open_clip':>14}")
    for name in [*contenders, "open_clip"]:
        if name in results:
            label = (f"open_clip ({FLAGS.source}, workers={FLAGS.open_clip_workers})"
                     if name == "open_clip" else name)
            ratio = (f"{results[name] / results['open_clip']:.2f}x" if "open_clip" in results
                     else "")
            print(f"{label:<44}{results[name]:>10.1f}{results[name] / len(cores):>10.1f}"
                  f"{ratio:>14}")
    with open(os.path.join(FLAGS.workdir, f"loader_bench_{FLAGS.source}.json"), "w") as f:
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
    flags.DEFINE_enum("source", "csv", ["csv", "webdataset"], "The files both loaders read.")
    flags.DEFINE_bool("child", False, "Internal: time mmjax in this process.")
    flags.DEFINE_string("shards_dir", None, "Internal: the child's shards.")
    flags.DEFINE_string("preprocess", FAST, "Internal: the child's preprocessing ops.")
    FLAGS = flags.FLAGS
    app.run(main)
