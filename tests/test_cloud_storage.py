"""A workdir and shards in Google Cloud Storage: the run writes into the bucket and resumes from
it exactly, against the local emulator (conftest's `bucket`)."""

import io
import json
import os
import tarfile

import numpy as np
import pytest

from conftest import REPO_ROOT
from mmjax import evaluate, paths


def _losses(workdir: str) -> dict[int, float]:
    records = [json.loads(line) for line in paths.read_text(
        paths.join(workdir, "metrics.jsonl")).splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def _local_gs_folders(*roots) -> list[str]:
    return [os.path.join(root, name) for top in roots for root, dirs, _ in os.walk(top)
            for name in dirs if name.startswith("gs:")]


def test_a_run_in_a_bucket_writes_there_and_resumes_exactly(bucket, finished_run, tiny_config,
                                                            tmp_path, monkeypatch):
    """The tiny run of the shared finished run (same config, same 8 devices) with its workdir in
    the bucket: checkpoints, metrics, TensorBoard events and the config snapshot land there, the
    losses equal the local run's bitwise; with its last checkpoint gone, the run resumes from
    the bucket and ends with the same losses and evaluation."""
    from mmjax import train

    monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would land here
    reference, reference_eval = finished_run
    workdir = f"{bucket}/runs/tiny"
    train.train_and_evaluate(tiny_config, workdir)

    assert paths.listdir(f"{workdir}/checkpoints") == ["4", "8"]
    assert set(paths.listdir(f"{workdir}/checkpoints/8")) >= {"state", "data"}
    assert {"config.json", "metrics.jsonl", "eval_results.json", "tensorboard",
            "vocabulary.txt"} <= set(paths.listdir(workdir))
    assert paths.listdir(f"{workdir}/tensorboard")
    expected = _losses(reference)
    assert _losses(workdir) == expected

    paths.Path(f"{workdir}/checkpoints/8").rmtree()  # a crash before step 8 was saved
    resumed_eval = train.train_and_evaluate(tiny_config, workdir)
    assert _losses(workdir) == expected
    reference_eval = {k: v for k, v in reference_eval.items() if k != "eval/seconds"}
    assert {k: v for k, v in resumed_eval.items() if k != "eval/seconds"} == pytest.approx(
        reference_eval, abs=1e-6)

    # --mode=eval there, its tokenizer reading the workdir's vocabulary copy from the bucket:
    # the numbers, the embeddings and the report with its figures land in the bucket.
    tiny_config.tokenizer.vocabulary_file = f"{workdir}/vocabulary.txt"
    evaluated = evaluate.evaluate_checkpoint(tiny_config, workdir)
    assert {k: v for k, v in evaluated.items() if k != "eval/seconds"} == pytest.approx(
        reference_eval, abs=1e-6)
    assert {"eval_report.md", "eval_embeddings.npz", "report"} <= set(paths.listdir(workdir))
    assert "training_curves.png" in paths.listdir(f"{workdir}/report")
    assert not _local_gs_folders(str(tmp_path), REPO_ROOT)


def test_shards_written_to_and_read_from_a_bucket(bucket, user_data, tmp_path, monkeypatch):
    """make_shards into gs://, then the records read through a `shards:gs://...` spec are the
    local shards' records; make_vocab reads them and writes its model there."""
    from input_pipeline import datasets
    from input_pipeline.convert import make_shards

    monkeypatch.chdir(tmp_path)
    output = f"{bucket}/shards/user"
    metadata = make_shards.make_shards(user_data["csv"], output, examples_per_shard=100,
                                       quiet=True, check_images=False)
    assert metadata["splits"] == user_data["metadata"]["splits"]
    assert sorted(paths.listdir(output)) == sorted(
        ["metadata.json"] + metadata["splits"]["train"]["files"]
        + metadata["splits"]["test"]["files"])
    spec = datasets.parse_spec(f"shards:{output}:train", "train")
    assert (spec.name, spec.split, spec.short_name) == (output, "train", "user_train")
    source = datasets.open_source(spec, None)
    indices = np.array([0, 7, 150, source.num_examples - 1])
    assert source.num_examples == user_data["source"].num_examples
    assert list(source.fetch(indices)) == list(user_data["source"].fetch(indices))

    # A SentencePiece vocabulary trained on the bucket's shards, written there and used from there.
    from input_pipeline.convert import make_vocab
    from mmjax import text_tokenizers

    model = make_vocab.train_vocabulary(f"shards:{output}:train", f"{bucket}/vocab/user",
                                        vocab_size=120)
    assert model == f"{bucket}/vocab/user.model" and paths.exists(f"{bucket}/vocab/user.vocab")
    tokenizer = text_tokenizers.build_tokenizer(dict(name="sentencepiece", context_length=24,
                                                vocabulary_file=model))
    assert tokenizer.vocab_size <= 120 and tokenizer(["two red circles"]).shape == (1, 24)
    assert not _local_gs_folders(str(tmp_path), REPO_ROOT)


def test_logs_in_a_bucket_upload_each_byte_once(bucket, monkeypatch):
    """metrics.jsonl and the TensorBoard event files of a cloud workdir grow by appended parts:
    over N log intervals the bytes uploaded are the bytes the logs hold (linear in N), not the
    whole files again at every interval (quadratic)."""
    from google.cloud import storage

    from mmjax.training.metric_writers import MetricWriter

    uploaded = []
    upload = storage.Blob.upload_from_string
    monkeypatch.setattr(storage.Blob, "upload_from_string", lambda self, data, *a, **k: (
        uploaded.append(len(data)), upload(self, data, *a, **k))[1])
    write_bytes = paths.write_bytes
    monkeypatch.setattr(paths, "write_bytes", lambda path, data: (
        uploaded.append(len(data)), write_bytes(path, data))[1])

    workdir = f"{bucket}/logs"
    writer = MetricWriter(workdir, total_steps=200)
    for step in range(1, 201):
        writer.write(step, {"train/loss": 1.0 / step, "train/learning_rate": 1e-3})
    writer.close()
    held = {}
    for folder in (workdir, paths.join(workdir, "tensorboard")):
        for name in paths.listdir(folder):
            path = paths.join(folder, name)
            if paths.isfile(path):
                held[name] = len(paths.read_bytes(path))
    assert set(held) >= {"metrics.jsonl"} and len(held) == 2, held  # the log and one event file
    assert sum(uploaded) == sum(held.values()), (sum(uploaded), held)
    lines = paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 201))


def test_tools_read_and_write_buckets(bucket, tmp_path):
    """judge_data writes its images and shards to a bucket (rendering on local disk first);
    import_open_clip reads its --vocab from one."""
    from input_pipeline.generated import judge_data
    from mmjax.tools.weights import import_open_clip

    out = f"{bucket}/judge_data"
    metadata = judge_data.write_judge_data(out, count=12, quiet=True)
    assert sum(s["num_examples"] for s in metadata["splits"].values()) == 12, metadata
    assert len(paths.listdir(paths.join(out, "rendered", "images"))) == 12
    assert paths.exists(paths.join(out, "shards", "metadata.json"))

    fixtures = os.path.join(REPO_ROOT, "tests", "fixtures")
    vocab = f"{bucket}/vocab/bpe_simple_vocab_16e6.txt.gz"
    paths.copy(os.path.join(fixtures, "bpe_simple_vocab_16e6.txt.gz"), vocab)
    # Read from the bucket: its 49408 ids are compared with the fixture model's 300.
    with pytest.raises(ValueError, match="49408 ids but the model's vocabulary has 300"):
        import_open_clip.import_open_clip(
            os.path.join(fixtures, "open_clip_tiny_gelu.safetensors"), str(tmp_path / "w"),
            vision_heads=2, text_heads=2, quick_gelu=False, vocabulary_file=vocab)


def _shard_files(directory) -> dict[str, bytes]:
    return {name: paths.read_bytes(paths.join(directory, name))
            for name in paths.listdir(directory) if name.endswith(".array_record")}


def test_make_shards_reads_a_bucket(bucket, user_data, tmp_path):
    """Webdataset tars, and a CSV whose image paths are relative to it, read from gs:// into
    gs:// shards: the same shards, byte for byte, as the local files give."""
    from input_pipeline.convert import make_shards

    raw = os.path.dirname(user_data["csv"])
    tars = tmp_path / "tars"
    tars.mkdir()
    names = sorted(os.listdir(os.path.join(raw, "images")))[:40]
    for shard in range(2):
        with tarfile.open(tars / f"{shard:05d}.tar", "w") as tar:
            for name in names[shard * 20:(shard + 1) * 20]:
                stem = name.rsplit(".", 1)[0]
                tar.add(os.path.join(raw, "images", name), arcname=name)
                caption = f"{stem} shapes".encode()
                info = tarfile.TarInfo(f"{stem}.txt")
                info.size = len(caption)
                tar.addfile(info, io.BytesIO(caption))
    paths.copy_tree(str(tars), f"{bucket}/raw/tars")
    paths.copy_tree(raw, f"{bucket}/raw/csv")

    for given, local in [(f"{bucket}/raw/tars/*.tar", f"{tars}/*.tar"),
                         (f"{bucket}/raw/csv/captions.csv", user_data["csv"])]:
        out = f"{bucket}/shards/{len(given)}"
        from_bucket = make_shards.make_shards(given, out, examples_per_shard=16, quiet=True,
                                              check_images=False)
        expected = make_shards.make_shards(local, str(tmp_path / f"local{len(given)}"),
                                           examples_per_shard=16, quiet=True,
                                           check_images=False)
        assert from_bucket["splits"] == expected["splits"]
        assert from_bucket["left_out"] == expected["left_out"]
        assert _shard_files(out) == _shard_files(str(tmp_path / f"local{len(given)}"))
        assert from_bucket["splits"]["train"]["num_examples"] > 0
