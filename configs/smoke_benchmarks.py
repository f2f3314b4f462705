"""The smoke run evaluated as CLIP papers report: ImageNet-1k zero-shot and linear probe, COCO
retrieval, each its own eval set, with clip_benchmark-style result files.

Without the real datasets, on their stand-ins (real feature specs, generated content; the
numbers mean nothing, the run shows what the suite does):

    python -m input_pipeline.generated.standins --data_dir=/tmp/standins
    python main.py --config=configs/smoke_benchmarks.py --workdir=workdir/smoke_benchmarks \
        --config.data.tfds_data_dir=/tmp/standins

With imagenet2012 and coco_captions prepared (array_record), point tfds_data_dir at them.
"""

from configs import common, smoke


def get_config():
    config = smoke.get_config()
    config.name = "smoke_benchmarks"
    # At the end only: the smoke model trains in minutes, ImageNet's 1,000 x 80 prompts take long.
    return common.with_benchmark_evals(config, every_steps=0, probe_examples=64)
