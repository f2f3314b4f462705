"""FLIP's last phase: a short unmasked run that starts from a patch-dropout run's parameters.

The model has seen only half of each image's patches; a few per cent of the schedule with every
patch (and a lower learning rate) closes the gap between training and evaluation.

python main.py --config=configs/clip_b16_flip_unmasked.py --workdir=workdir/clip_b16_flip_unmasked \
    --config.init_from.checkpoint=workdir/clip_b16_flip --config.data.train=shards:/data/laion:train
"""

from configs import clip_b16_flip


def get_config():
    config = clip_b16_flip.get_config()
    config.name = "clip_b16_flip_unmasked"
    config.model.image_tower.patch_dropout = 0.0
    config.init_from.checkpoint = "workdir/clip_b16_flip"  # every parameter; a fresh optimizer
    config.total_steps = config.total_steps // 20
    config.warmup_steps = config.total_steps // 10
    config.learning_rate = config.learning_rate / 5
    return config
