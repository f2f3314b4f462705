"""SigLIP ViT-B/16 at 224 px: sigmoid loss, chunked over the batch devices; MAP pooling.

python main.py --config=configs/siglip_b16.py --workdir=DIR --config.data.train=tfds:...
"""

import math

from configs import clip_b16


def get_config():
    config = clip_b16.get_config(patch_size=16)
    config.name = "siglip_b16"
    config.losses = {"siglip": 1.0}
    config.model.embed_dim = 768
    config.model.image_tower.update(pooling="map")
    config.model.logit_scale_init = math.log(10.0)
    config.model.logit_bias_init = -10.0
    config.learning_rate = 1e-3
    config.optimizer.weight_decay = 1e-4
    return config
