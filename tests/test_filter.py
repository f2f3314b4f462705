"""Curating a shard set with a trained run: scores, near-duplicates within the set and of an
evaluation set, the same bytes for any number of workers, and an interrupted run resumed."""

import csv
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from input_pipeline import datasets, shards
from input_pipeline.convert import beam, make_shards
from input_pipeline.convert import filter as curate
from input_pipeline.generated import shapes, synthetic

DUPLICATES, NEAR_TEST = 12, 6


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tfds_dir):
    """200 captioned images, one of them corrupt; 12 more rows are other files holding copies of
    pool images, and 6 hold copies of the tiny evaluation split's images."""
    root = tmp_path_factory.mktemp("pool")
    written = synthetic.write_captioned_images(str(root / "raw"), 200, image_size=32,
                                               phrasings=("{}",), corrupt=1)
    rows = list(csv.DictReader(open(written["csv"])))
    extra = []
    for i in range(DUPLICATES):
        name = f"images/copy{i:02d}.png"
        shutil.copy(root / "raw" / rows[i * 3]["image"], root / "raw" / name)
        extra.append({"image": name, "caption": rows[i * 3]["caption"], "split": "train"})
    test = datasets.open_source(datasets.parse_spec("tfds:mmjax_shapes/tiny:test", "test"),
                                tfds_dir)
    for i in range(NEAR_TEST):
        record = test.decode(tf.constant(test.fetch(np.array([i]))[0]), 0)
        name = f"images/test{i:02d}.png"
        (root / "raw" / name).write_bytes(record["image"].numpy())
        extra.append({"image": name, "caption": shapes.render_example("test", i)["caption"],
                      "split": "train"})
    with open(written["csv"], "a", newline="") as f:
        csv.DictWriter(f, fieldnames=["image", "caption", "split"]).writerows(extra)
    make_shards.make_shards(written["csv"], str(root / "shards"), examples_per_shard=64,
                            quiet=True, check_images=False)
    return str(root / "shards")


def _files(directory) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory)) if name != shards.METADATA}


def test_filter_removes_copies_keeps_the_best_and_is_the_same_for_any_workers(
        pool, finished_run, tfds_dir, tmp_path, monkeypatch):
    options = dict(keep_fraction=0.7, duplicate_similarity=0.9999, data_dir=tfds_dir,
                   against=("tfds:mmjax_shapes/tiny:test",), chunk_size=64,
                   examples_per_shard=50, quiet=True)
    workdir = finished_run[0]
    one = curate.filter_shards(pool, str(tmp_path / "one"), workdir, workers=1, **options)
    counts = one["filter"]["counts"]
    assert counts["input"] == 200 + DUPLICATES + NEAR_TEST
    assert counts["undecodable"] == 1 and counts["duplicate"] >= DUPLICATES
    assert counts["near_evaluation"] >= NEAR_TEST
    rest = counts["input"] - counts["duplicate"] - counts["near_evaluation"] - 1
    assert counts["kept"] == round(0.7 * rest) and counts["low_score"] == rest - counts["kept"]

    table = pq.read_table(tmp_path / "one" / "scores.parquet").to_pydict()
    why = dict(zip(table["key"], table["why"]))
    assert {why[k] for k in why if k.startswith("images/copy")} == {"duplicate"}
    assert {why[k] for k in why if k.startswith("images/test")} == {"near_evaluation"}
    scores, reasons = np.asarray(table["score"]), np.asarray(table["why"])
    assert scores[reasons == ""].min() >= scores[reasons == "low_score"].max()  # the best stayed

    source = datasets.open_source(datasets.parse_spec(f"shards:{tmp_path / 'one'}:train",
                                                      "train"), None)
    assert source.num_examples == counts["kept"]
    record = shards.decode_record(source.fetch(np.array([counts["kept"] - 1]))[0])
    assert int(record["id"]) == counts["kept"] - 1  # renumbered

    four = curate.filter_shards(pool, str(tmp_path / "four"), workdir, workers=4, **options)
    assert four["filter"]["counts"] == counts
    assert _files(tmp_path / "one") == _files(tmp_path / "four")
    # Beam's workers embed the chunks (in this process: the runner's mode is what differs).
    done_by_beam, real_run_each = [], beam.run_each

    def run_each(items, function, options, label):
        real_run_each(items, function, options, label)
        done_by_beam.extend(os.path.exists(f"{function.staging}/chunk-{i:06d}.npz")
                            for i in items)

    monkeypatch.setattr(curate.beam, "run_each", run_each)
    curate.filter_shards(pool, str(tmp_path / "beam"), workdir, engine="beam",
                         beam_options="--direct_running_mode=in_memory --direct_num_workers=1",
                         **options)
    assert _files(tmp_path / "one") == _files(tmp_path / "beam")
    assert len(done_by_beam) == -(-counts["input"] // 64) + 2 and all(done_by_beam)
    monkeypatch.undo()

    # Interrupted in its third chunk, then run again: the finished chunks are read back.
    embedded = []
    real = curate._embedder

    def failing(model):
        embed = real(model)

        def once(images, captions):
            embedded.append(len(images))
            if len(embedded) == 3:
                raise RuntimeError("interrupted")
            return embed(images, captions)
        return once

    monkeypatch.setattr(curate, "_embedder", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        curate.filter_shards(pool, str(tmp_path / "again"), workdir, workers=1, **options)
    finished = len(embedded) - 1  # the pool's other chunks went on and were saved
    curate.filter_shards(pool, str(tmp_path / "again"), workdir, workers=1, **options)
    pool_chunks, test_chunks = -(-counts["input"] // 64), 128 // 64
    # Again: only the chunk that failed, and the evaluation set's (not reached before).
    assert len(embedded) - (finished + 1) == pool_chunks - finished + test_chunks
    assert _files(tmp_path / "again") == _files(tmp_path / "one")


def test_an_image_that_does_not_decode_is_no_ones_original():
    embeddings = np.eye(4, dtype=np.float32)[[0, 1, 0, 2]]
    assert list(curate.near_duplicates(embeddings, 0.99)) == [False, False, True, False]
    against = np.eye(4, dtype=np.float32)[[2]]
    assert list(curate.near_duplicates(embeddings, 0.99, against=against)) == [
        False, False, False, True]
    why = curate.decide(np.array([0.1, 0.9, 0.5, 0.3]), np.array([True, True, False, True]),
                        np.zeros(4, bool), np.zeros(4, bool), keep_fraction=0.5, min_score=None)
    assert list(why) == ["low_score", "", "undecodable", ""]  # 2 of the 3 decodable stay
