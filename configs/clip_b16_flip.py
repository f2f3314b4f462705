"""CLIP ViT-B/16 trained the FLIP way: half of each image's patches dropped at random in training.

The blocks see 98 of 196 patches (and the class token), so a step costs about half the image
tower's FLOPs and memory; evaluation sees every patch. Finish with the unmasked phase,
configs/clip_b16_flip_unmasked.py, which starts from this run's checkpoint.

Benchmark: python -m mmjax.tools.benchmark --config=configs/clip_b16_flip.py --config.batch_size=512
\
               --config.model.attention_implementation=cudnn
Train:     python main.py --config=configs/clip_b16_flip.py --workdir=workdir/clip_b16_flip \
               --config.data.train=shards:/data/laion:train
"""

from configs import clip_b16


def get_config():
    config = clip_b16.get_config(patch_size=16)
    config.name = "clip_b16_flip"
    config.model.image_tower.patch_dropout = 0.5
    return config
