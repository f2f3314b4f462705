"""make_shards on the layouts real datasets come in (img2dataset's webdataset tars and parquet),
streamed: bad members are counted and named, any number of workers gives the same bytes, and an
interrupted conversion goes on from its last finished shard."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import one_device_mesh
from input_pipeline import datasets, shards
from input_pipeline.convert import make_shards
from input_pipeline.generated import shapes

SAMPLES_PER_TAR = 20
TRUNCATED_AT = 14  # the image of this sample of the second tar is cut short


def _jpeg(index: int) -> bytes:
    example = shapes.render_example("train", index)
    buffer = io.BytesIO()
    Image.fromarray(example["image"]).resize((32, 32)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _caption(index: int) -> str:
    return shapes.render_example("train", index)["caption"]


def _add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def img2dataset_output(tmp_path_factory):
    """Two tars as img2dataset writes them (KEY.jpg, KEY.txt, KEY.json), one JPEG of random
    bytes in the first, the second cut inside a member; and a parquet file with one row
    without a caption."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("img2dataset")
    tars = root / "tars"
    tars.mkdir()
    for shard in range(2):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for i in range(SAMPLES_PER_TAR):
                index, key = shard * SAMPLES_PER_TAR + i, f"{shard:05d}{i:04d}"
                image = (
                    np.random.default_rng(i).bytes(900) if (shard, i) == (0, 3) else _jpeg(index)
                )
                if (shard, i) == (1, TRUNCATED_AT):
                    cut = buffer.tell() + 512 + len(image) // 2  # the header, half the image
                _add(tar, f"{key}.jpg", image)
                captions = [_caption(index)] + ([f"another view: {_caption(index)}"] if i % 2
                                                 else [])  # one caption or two
                _add(tar, f"{key}.txt", "\n".join(captions).encode())
                _add(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
        data = buffer.getvalue()
        (tars / f"{shard:05d}.tar").write_bytes(data[:cut] if shard == 1 else data)
    rows = [{"key": f"p{i}", "caption": None if i == 4 else _caption(i), "jpg": _jpeg(i),
             "url": f"https://example.invalid/{i}.jpg"} for i in range(20)]
    pq.write_table(pa.Table.from_pylist(rows), root / "part-00000.parquet", row_group_size=4)
    return root


def _shard_bytes(directory) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory)) if name.endswith(".array_record")}


def test_webdataset_tars_convert_with_exact_counts_and_the_same_bytes_on_any_workers(
        img2dataset_output, tmp_path):
    tars = str(img2dataset_output / "tars")
    one = make_shards.make_shards(tars, str(tmp_path / "one"), examples_per_shard=10,
                                  workers=1, quiet=True)
    expected_examples = SAMPLES_PER_TAR - 1 + TRUNCATED_AT
    assert one["splits"]["train"]["num_examples"] == expected_examples  # 19 + 14
    assert one["splits"]["train"]["files"] == [shards.shard_name("train", i, 4) for i in range(4)]
    assert [name.split(":")[0] for name in one["left_out"]["undecodable"]] == [
        "00000.tar/000000003"
    ]
    (unreadable,) = one["left_out"]["unreadable"]
    assert unreadable.startswith("00001.tar: ") and f"00001{TRUNCATED_AT:04d}" in unreadable
    four = make_shards.make_shards(f"{tars}/*.tar", str(tmp_path / "four"), examples_per_shard=10,
                                   workers=4, quiet=True)
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "four")
    assert (four["splits"], four["left_out"]) == (one["splits"], one["left_out"])

    source = datasets.open_source(datasets.parse_spec(f"shards:{tmp_path / 'one'}:train",
                                                      "train"), None)
    record = shards.decode_record(source.fetch(np.array([SAMPLES_PER_TAR - 1]))[0])  # tar 2, first
    assert record["key"].numpy().decode() == "00001.tar/000010000"
    assert record["image"].numpy() == _jpeg(SAMPLES_PER_TAR)
    assert [c.decode() for c in record["captions"].numpy()] == [_caption(SAMPLES_PER_TAR)]


def test_an_interrupted_conversion_goes_on_from_its_last_shard(img2dataset_output, tmp_path,
                                                               monkeypatch, capsys):
    tars = str(img2dataset_output / "tars")
    reference = make_shards.make_shards(tars, str(tmp_path / "whole"), examples_per_shard=10,
                                        quiet=True)
    finish_shard = make_shards.SplitWriter.finish_shard

    def killed_after_two(self):
        finish_shard(self)
        if len(self.state["shards"]) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(make_shards.SplitWriter, "finish_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        make_shards.make_shards(tars, str(tmp_path / "resumed"), examples_per_shard=10)
    assert not os.path.exists(tmp_path / "resumed" / "metadata.json")
    monkeypatch.setattr(make_shards.SplitWriter, "finish_shard", finish_shard)
    capsys.readouterr()
    resumed = make_shards.make_shards(tars, str(tmp_path / "resumed"), examples_per_shard=10)
    assert "Resuming the conversion" in capsys.readouterr().out
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "whole")
    assert resumed["left_out"] == reference["left_out"]
    assert sorted(os.listdir(tmp_path / "resumed")) == ["metadata.json"] + [
        shards.shard_name("train", i, 4) for i in range(4)]


def test_parquet_converts_and_trains(img2dataset_output, tiny_config, tmp_path):
    from mmjax import train

    output = str(tmp_path / "parquet_shards")
    metadata = make_shards.make_shards(str(img2dataset_output / "part-00000.parquet"), output,
                                       quiet=True)
    assert metadata["splits"]["train"]["num_examples"] == 19
    assert metadata["left_out"]["no_caption_file"] == ["part-00000.parquet/p4"]
    tiny_config.data.train = f"shards:{output}:train"  # captions in the tiny config's words
    tiny_config.data.eval = ""
    tiny_config.total_steps = 2
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"), mesh=one_device_mesh())
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        losses = [json.loads(line)["train/loss"] for line in f]
    assert len(losses) == 2 and all(np.isfinite(losses))


CLIP_BPE = os.path.join(os.path.dirname(__file__), "fixtures", "bpe_simple_vocab_16e6.txt.gz")


def test_shards_tokenized_at_conversion_feed_the_same_ids_and_refuse_another_tokenizer(
        img2dataset_output, tiny_config, tmp_path):
    """make_shards --tokenizer=clip_bpe stores every caption's ids: the train and eval
    pipelines read them (no tokenizer in the loop) and give exactly the batches that tokenizing
    gives; a run with another tokenizer is refused before compiling, naming the fix."""
    from input_pipeline import pipeline
    from mmjax import preflight, text_tokenizers

    tars = str(img2dataset_output / "tars")
    tokenizer_config = {"name": "clip_bpe", "context_length": 24, "vocabulary_file": CLIP_BPE}
    tokenizer = text_tokenizers.build_tokenizer(tokenizer_config)
    stored = make_shards.make_shards(tars, str(tmp_path / "tokenized"), examples_per_shard=10,
                                     quiet=True, tokenizer=tokenizer_config)
    make_shards.make_shards(tars, str(tmp_path / "plain"), examples_per_shard=10, quiet=True)
    assert stored["tokenizer"] == text_tokenizers.identity(tokenizer)
    sources_ = {name: datasets.open_source(datasets.parse_spec(
        f"shards:{tmp_path / name}:train", "train"), None) for name in ("tokenized", "plain")}
    assert sources_["tokenized"].stored_tokens(tokenizer)
    assert not sources_["plain"].stored_tokens(tokenizer)
    assert not sources_["tokenized"].stored_tokens(text_tokenizers.build_tokenizer(
        dict(tokenizer_config, context_length=32)))

    def batches(source, make):
        return list(make(source).take(3).as_numpy_iterator())

    def train(source):
        return datasets.train_dataset(source, tokenizer, global_batch_size=8, image_size=16,
                                      seed=3)

    def evaluation(source):
        return datasets.eval_dataset(source, tokenizer, global_batch_size=8, image_size=16,
                                     captions_per_image=2)

    for make in (train, evaluation):
        got, expected = batches(sources_["tokenized"], make), batches(sources_["plain"], make)
        for a, b in zip(got, expected):
            assert sorted(a) == sorted(b)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    tiny_config.data.train = f"shards:{tmp_path / 'tokenized'}:train"
    tiny_config.data.eval = ""
    with pytest.raises(preflight.ConfigError, match=r"config.tokenizer: is not the tokenizer "
                       r"shards:.*tokenized:train was tokenized with at conversion \(clip_bpe, "
                       r"context 24.*Fix: set config.tokenizer to that one"):
        preflight.check(tiny_config, mesh=one_device_mesh(), data=pipeline)


def test_the_loader_benchmark_reads_its_webdataset_tars_both_ways(tmp_path):
    """input_pipeline.benchmarks.loader --source=webdataset: img2dataset-style tars of 341x256 JPEGs
    (with
    img2dataset's NNNNN_stats.json beside them, which make_shards skips), converted with and
    without stored tokens, both fed through the training pipeline."""
    from input_pipeline.benchmarks import loader

    shard_dirs, pattern = loader.prepare_webdataset(str(tmp_path), 12, per_tar=5)
    assert pattern == str(tmp_path / "tars" / "{00000..00002}.tar")
    with tarfile.open(tmp_path / "tars" / "00002.tar") as tar:
        names = tar.getnames()
        image = Image.open(tar.extractfile(names[0]))
    assert names == ["000000010.jpg", "000000010.txt", "000000010.json",
                     "000000011.jpg", "000000011.txt", "000000011.json"]
    assert image.size == (341, 256) and image.format == "JPEG"
    for label, directory in shard_dirs.items():
        with open(os.path.join(directory, "metadata.json")) as f:
            metadata = json.load(f)
        assert metadata["splits"]["train"]["num_examples"] == 12, label
        assert ("tokenizer" in json.dumps(metadata)) == (label == "tokens stored by make_shards")
        assert loader.time_mmjax(directory, loader.FAST, batch_size=4, batches=1, warmup=0) > 0


BEAM_IN_PROCESS = "--direct_running_mode=multi_threading --direct_num_workers={}"


@pytest.mark.parametrize("workers", [1, 4])
def test_beam_writes_the_threaded_converters_shards(img2dataset_output, user_data, tmp_path,
                                                    workers, monkeypatch):
    """Beam's local runner with 1 and 4 workers: byte for byte the threaded converter's shards
    and metadata, for tars (a unit per file) and a table (a unit per run of rows, its left-out
    images named in order)."""
    monkeypatch.setattr(make_shards.readers.ListedSource, "ITEMS_PER_UNIT", 50)
    for name, source in (("tars", str(img2dataset_output / "tars")),
                         ("table", user_data["csv"])):
        threads = make_shards.make_shards(source, str(tmp_path / f"{name}_threads"),
                                          examples_per_shard=7, quiet=True)
        beam = make_shards.make_shards(source, str(tmp_path / f"{name}_beam"),
                                       examples_per_shard=7, quiet=True, engine="beam",
                                       beam_options=BEAM_IN_PROCESS.format(workers))
        assert _shard_bytes(tmp_path / f"{name}_beam") == _shard_bytes(tmp_path / f"{name}_threads")
        assert (beam["splits"], beam["left_out"]) == (threads["splits"], threads["left_out"])
        assert sum(len(v) for v in beam["left_out"].values()) == (2 if name == "tars" else 3)


def test_an_interrupted_beam_conversion_redoes_nothing_it_finished(img2dataset_output,
                                                                    tmp_path, monkeypatch):
    """Killed while writing the third shard: run again, no unit is read again and the shards
    finished before stay the same files (Beam runs copies of the functions, so the file system
    is what tells)."""
    import glob

    from input_pipeline.convert import beam

    tars = str(img2dataset_output / "tars")
    write_shard = beam.write_shard

    def killed_at_the_third(plan, **kwargs):
        if plan[0] == 2:
            raise RuntimeError("killed while writing shard 2")
        write_shard(plan, **kwargs)

    options = BEAM_IN_PROCESS.format(1)
    monkeypatch.setattr(beam, "write_shard", killed_at_the_third)
    with pytest.raises(RuntimeError, match="killed while writing shard 2"):
        make_shards.make_shards(tars, str(tmp_path / "resumed"), examples_per_shard=10,
                                quiet=True, engine="beam", beam_options=options)
    finished = {os.path.basename(p)[:11]: os.stat(p).st_ino
                for p in glob.glob(str(tmp_path / "resumed" / ".partial-*" / "train-*"))}
    assert finished and "train-00002" not in finished and not os.path.exists(
        tmp_path / "resumed" / "metadata.json")
    monkeypatch.setattr(beam, "write_shard", write_shard)
    monkeypatch.setattr(beam, "convert_unit", lambda *a, **k: pytest.fail("redone"))
    make_shards.make_shards(tars, str(tmp_path / "resumed"), examples_per_shard=10, quiet=True,
                            engine="beam", beam_options=options)
    for stem, inode in finished.items():
        assert os.stat(tmp_path / "resumed" / f"{stem}-of-00004.array_record").st_ino == inode
    make_shards.make_shards(tars, str(tmp_path / "whole"), examples_per_shard=10, quiet=True)
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "whole")


def test_a_record_has_the_same_bytes_in_another_process():
    """Shards are byte-identical whoever writes them: a record's map of features is written in
    key order, not in the process's own order (which protobuf varies from run to run)."""
    import subprocess
    import sys

    code = ("import sys; from input_pipeline import shards; sys.stdout.buffer.write("
            "shards.encode_record(b'image', ['a caption', 'another'], 7, 'key', 3))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           env={**os.environ, "PYTHONHASHSEED": "1"}).stdout
    assert other == shards.encode_record(b"image", ["a caption", "another"], 7, "key", 3)


def test_karpathy_caption_splits_convert_with_five_captions_per_image(tmp_path):
    """Flickr30k as Karpathy's dataset_flickr30k.json describes it: its test split, five
    captions per image, ready for retrieval with captions_per_image=5."""
    images = [{"filename": f"{i}.jpg", "split": ["train", "val", "test"][i % 3],
               "sentences": [{"raw": f" {_caption(i)} ({k}) ", "tokens": []} for k in range(5)]}
              for i in range(9)]
    for i in range(9):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(i))
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(
        {"images": images, "dataset": "flickr30k"}))
    metadata = make_shards.make_shards(str(tmp_path / "dataset_flickr30k.json"),
                                       str(tmp_path / "shards"), quiet=True)
    assert {split: (info["num_examples"], info["num_captions"])
            for split, info in metadata["splits"].items()} == {
                "test": (3, 15), "train": (3, 15), "val": (3, 15)}
    source = datasets.open_source(datasets.parse_spec(f"shards:{tmp_path / 'shards'}:test",
                                                      "test"), None)
    record = shards.decode_record(source.fetch(np.array([0]))[0])
    assert record["key"].numpy().decode() == "2.jpg"
    assert [c.decode() for c in record["captions"].numpy()] == [f"{_caption(2)} ({k})"
                                                                for k in range(5)]
