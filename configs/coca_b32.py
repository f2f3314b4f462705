"""CoCa ViT-B/32 at 224 px: open_clip's text tower as the unimodal decoder, a 12-layer
multimodal decoder, contrastive + 2 x captioning.

python main.py --config=configs/coca_b32.py --workdir=DIR --config.data.train=tfds:...
"""

import ml_collections

from configs import clip_b16


def get_config():
    config = clip_b16.get_config(patch_size=32)
    config.name = "coca_b32"
    config.model.name = "coca"
    config.model.decoder = ml_collections.ConfigDict(dict(depth=12))
    config.losses = {"clip": 1.0, "caption": 2.0}
    config.evals = ("retrieval", "zeroshot", "captioning")
    config.caption = ml_collections.ConfigDict(dict(beam_size=1))
    return config
