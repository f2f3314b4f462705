"""CLIP ViT-B/32 at 224 px with open_clip's text tower (12 layers, width 512, context 77)."""

from configs import clip_b16


def get_config():
    return clip_b16.get_config(patch_size=32)
