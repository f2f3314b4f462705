"""CoCa ViT-B/32 at 224 px: open_clip's text tower as the unimodal decoder, a 12-layer
multimodal decoder, contrastive + 2 x captioning.

python main.py --config=configs/coca_b32.py --workdir=DIR --config.data.train=tfds:...
"""

from configs import clip_b16, common


def get_config():
    config = common.as_coca(clip_b16.get_config(patch_size=32), decoder_depth=12)
    config.name = "coca_b32"
    return config
