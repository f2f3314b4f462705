"""The full-size image tokenizer (text-to-image's first stage): 256 px images -> a 16x16 grid of
tokens from 64,000 FSQ codes (levels 8,8,8,5,5,5, as FSQ's MaskGIT setting), ViT-B/16 encoder
and decoder.

Benchmark: python -m mmjax.tools.benchmark --config=configs/image_tokenizer_256.py
Train:     python main.py --config=configs/image_tokenizer_256.py --workdir=DIR \
               --config.data.train=shards:/data/images:train
               --config.data.eval=shards:/data/images:test
"""

from configs import common
from mmjax import defaults


def get_config():
    config = common.as_image_tokenizer(defaults.base_config(), encoder="B/16", decoder="B/16",
                                       levels=(8, 8, 8, 5, 5, 5))
    config.name = "image_tokenizer_256"
    config.data.image_size = 256
    config.model.dtype = "bfloat16"
    config.learning_rate = 1e-4
    config.warmup_steps = 5_000
    return config
