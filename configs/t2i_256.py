"""Full-size text-to-image: a masked-token generator (ViT-B-sized: width 768, 12
blocks, cross-attending to a CLIP text tower) over configs/image_tokenizer_256.py's 16x16 grid
of tokens from 64,000 codes, 256 px images.

Benchmark: python -m mmjax.tools.benchmark --config=configs/t2i_256.py
Train:     python main.py --config=configs/t2i_256.py --workdir=DIR \
               --config.image_tokenizer.workdir=A_TOKENIZER_256_RUN \
               --config.judge.workdir=A_JUDGE --config.data.train=shards:/data/images:train
"""

from configs import common, image_tokenizer_256


def get_config():
    config = common.as_text_to_image(image_tokenizer_256.get_config(), generator="B")
    config.name = "t2i_256"
    config.model.text_tower.variant = "clip"
    config.tokenizer.context_length = 77
    config.batch_size = 256
    config.learning_rate = 1e-4
    config.warmup_steps = 5_000
    config.generation.steps = 12
    return config
