"""CoCa ViT-L/14 at 224 px, open_clip's coca_ViT-L-14 shape: CLIP L/14's towers, a 12-layer
multimodal decoder, contrastive + 2 x captioning, at open_clip's global batch of 90,112.

Fit on a pod first: python -m mmjax.tools.aot --config=configs/coca_l14.py --topology=v5p-512
"""

from configs import clip_l14, common


def get_config():
    config = common.as_coca(clip_l14.get_config(), decoder_depth=12)
    config.name = "coca_l14"
    return config
