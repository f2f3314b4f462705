"""CLIP ViT-H/14 at 224 px, open_clip's shape (text tower: width 1024, 24 layers): 986.1 M
parameters, at open_clip's LAION-2B global batch of 79,000 rounded to 79,872 (a multiple of
1,024 chips' batch axis).

Fit on a pod first: python -m mmjax.tools.aot --config=configs/clip_h14.py --topology=v5p-1024
"""

from configs import clip_l14


def get_config():
    config = clip_l14.get_config()
    config.name = "clip_h14"
    config.model.embed_dim = 1024
    config.model.image_tower.update(variant="H/14")
    config.model.text_tower.update(variant="L")
    config.batch_size = 79_872
    return config
