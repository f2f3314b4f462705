"""make_shards on Apache Beam: the same shards, converted by any Beam runner.

    python -m input_pipeline.convert.make_shards --engine=beam --input='/data/laion/*.tar' \
        --output_dir=/data/laion_shards --beam_options='--direct_num_workers=8'

Two passes, each a Beam pipeline over independent pieces of work:

1. Every unit of the input (a tar or parquet file, a run of a table's rows:
   `readers.Unit`) is read, checked and encoded by one worker into its own ArrayRecord file in
   the staging folder, beside a summary (examples written, captions, what was left out).
2. From the units' counts, in input order, every output shard knows which records it holds;
   one worker per shard copies them in, giving each its id (its index in the split).

So the shards are those of the threaded converter, byte for byte, whatever the runner and the
number of workers; a unit or shard already in the staging folder (an interrupted run) is not
done again. The default options run Beam's local runner on every core, in processes; any
other runner (Dataflow, Flink, Spark) takes its usual options through --beam_options, with the
output folder on a file system every worker sees.
"""

from __future__ import annotations

import functools
import json
import os
import shlex

from input_pipeline import shards
from input_pipeline.convert import readers
from mmjax import text_tokenizers

# Records copied per read in pass 2: memory stays bounded whatever the shard size.
COPY_CHUNK = 256
DEFAULT_OPTIONS = ("--runner=DirectRunner", "--direct_running_mode=multi_processing",
                   "--direct_num_workers=0")


def pipeline_options(beam_options: str | list[str] | tuple = ()) -> tuple[list[str], str]:
    """The options given on the command line (one string) or as a list, and the runner they
    name (DirectRunner, Beam's local runner, unless they name another)."""
    options = (shlex.split(beam_options) if isinstance(beam_options, str)
               else list(beam_options))
    runner = next((o.split("=", 1)[1] for o in options if o.startswith("--runner=")),
                  "DirectRunner")
    return options, runner


def run_each(items: list, function, beam_options: list[str], label: str) -> None:
    """`function(item)` for every item, as one Beam pipeline (DEFAULT_OPTIONS, then
    `beam_options`); what the function returns is dropped: its work is what it writes."""
    import logging

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    if not items:
        return
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # its workers' chatter
    options = PipelineOptions(list(DEFAULT_OPTIONS) + list(beam_options))
    with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline | f"{label} items" >> beam.Create(items)
             | label >> beam.Map(function))


def _unit_paths(staging: str, split: str, index: int) -> tuple[str, str]:
    base = os.path.join(staging, f"unit-{split}-{index:06d}")
    return base + ".array_record", base + ".json"


def _shard_path(staging: str, split: str, shard: int) -> str:
    return os.path.join(staging, f"{split}-{shard:05d}.array_record")  # as make_shards names them


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def convert_unit(indexed_unit, *, staging: str, split: str, check_images: bool,
                 tokenizer_config: dict | None, video) -> None:
    """Pass 1 for one unit: its usable examples as records (ids set in pass 2) and a summary."""
    from array_record.python.array_record_module import ArrayRecordWriter


    index, unit = indexed_unit
    records_path, summary_path = _unit_paths(staging, split, index)
    tokenizer = text_tokenizers.build_tokenizer(tokenizer_config) if tokenizer_config else None
    summary = {"written": 0, "captions": 0, "left_out": {k: [] for k in readers.LEFT_OUT}}
    writer = ArrayRecordWriter(records_path + ".tmp", shards.WRITER_OPTIONS)
    for item in readers.read_unit(unit):
        if isinstance(item, readers.LeftOut):
            summary["left_out"][item.reason].append(item.what)
            continue
        data, reason, why = readers.load_example(item, check_images, video)
        if data is None:
            summary["left_out"][reason].append(why)
            continue
        tokens = tokenizer(item.captions) if tokenizer else None
        writer.write(shards.encode_record(data, item.captions, 0, item.key, item.label, tokens,
                                           modality=item.modality))
        summary["written"] += 1
        summary["captions"] += len(item.captions)
    writer.close()
    os.replace(records_path + ".tmp", records_path)
    _write_atomically(summary_path, json.dumps(summary))


def shard_plans(counts: list[int], examples_per_shard: int) -> list[tuple]:
    """(shard index, its first id, [(unit, first record, end record), ...]) per output shard,
    from the units' record counts in input order."""
    plans, ranges, shard, first_id, position = [], [], 0, 0, 0
    for unit, count in enumerate(counts):
        start = 0
        while start < count:
            take = min(count - start, examples_per_shard - (position - first_id))
            ranges.append((unit, start, start + take))
            start, position = start + take, position + take
            if position - first_id == examples_per_shard:
                plans.append((shard, first_id, ranges))
                shard, first_id, ranges = shard + 1, position, []
    if ranges:
        plans.append((shard, first_id, ranges))
    return plans


def _with_id(record: bytes, example_id: int) -> bytes:
    """The record with its id set, serialized as the threaded converter serializes it."""
    import tensorflow as tf

    example = tf.train.Example.FromString(record)
    example.features.feature["id"].int64_list.value[:] = [example_id]
    return example.SerializeToString(deterministic=True)


def write_shard(plan, *, staging: str, split: str) -> None:
    """Pass 2 for one output shard: its records from the units' files, with their ids."""
    from array_record.python.array_record_module import (
        ArrayRecordReader,
        ArrayRecordWriter,
    )

    shard, example_id, ranges = plan
    path = _shard_path(staging, split, shard)
    writer = ArrayRecordWriter(path + ".tmp", shards.WRITER_OPTIONS)
    for unit, start, end in ranges:
        reader = ArrayRecordReader(_unit_paths(staging, split, unit)[0])
        for chunk in range(start, end, COPY_CHUNK):
            for record in reader.read(list(range(chunk, min(chunk + COPY_CHUNK, end)))):
                writer.write(_with_id(record, example_id))
                example_id += 1
        reader.close()
    writer.close()
    os.replace(path + ".tmp", path)


def convert_split(source, split: str, staging: str, *, examples_per_shard: int,
                  check_images: bool, tokenizer_config: dict | None,
                  beam_options: list[str], video) -> dict:
    """Both passes for one split; returns its state as the threaded converter keeps it."""
    units = list(enumerate(source.units(split)))
    # What an interrupted run finished is not done again.
    todo = [u for u in units if not os.path.exists(_unit_paths(staging, split, u[0])[1])]
    run_each(todo, functools.partial(convert_unit, staging=staging, split=split,
                                     check_images=check_images,
                                     tokenizer_config=tokenizer_config, video=video),
             beam_options, f"{split}: read, check, encode")
    summaries = []
    for index, _ in units:
        with open(_unit_paths(staging, split, index)[1]) as f:
            summaries.append(json.load(f))
    counts = [s["written"] for s in summaries]
    plans = shard_plans(counts, examples_per_shard)
    todo = [p for p in plans if not os.path.exists(_shard_path(staging, split, p[0]))]
    run_each(todo, functools.partial(write_shard, staging=staging, split=split), beam_options,
             f"{split}: write shards")
    left_out = {reason: [what for s in summaries for what in s["left_out"][reason]]
                for reason in summaries[0]["left_out"]} if summaries else {}
    return {"written": sum(counts), "captions": sum(s["captions"] for s in summaries),
            "shards": [min((i + 1) * examples_per_shard, sum(counts)) for i in range(len(plans))],
            "left_out": left_out, "done": True}
