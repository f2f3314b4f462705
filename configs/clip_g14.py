"""CLIP ViT-g/14 at 224 px, open_clip's shape (text tower: width 1024, 24 layers): 1.37 B
parameters, at open_clip's LAION-2B global batch (88,000 rounded to 88,064).

Fit on a pod first: python -m mmjax.tools.aot --config=configs/clip_g14.py --topology=v5p-1024
"""

from configs import clip_h14


def get_config():
    config = clip_h14.get_config()
    config.name = "clip_g14"
    config.model.image_tower.update(variant="g/14")
    config.batch_size = 88_064
    return config
