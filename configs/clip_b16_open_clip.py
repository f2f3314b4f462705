"""open_clip's ViT-B-16 exactly (what configs/clip_b16.py trains, in OpenAI CLIP's form).

clip_b16 keeps mmjax's defaults (tanh GELU, LayerNorm epsilon 1e-6, a patch bias, no layer norm
before the blocks); this one matches open_clip's ViT-B-16 parameter for parameter, with CLIP's
BPE tokenizer, so its checkpoints export to open_clip and transformers as the standard model:

Train:  python main.py --config=configs/clip_b16_open_clip.py --workdir=W \
            --config.data.train=shards:/data/laion:train
Export: python -m mmjax.tools.weights.export_open_clip --workdir=W --out=DIR
        python -m mmjax.tools.weights.export_hf --workdir=W --out=DIR
"""

from configs import clip_b16, common


def get_config():
    config = common.as_open_clip_architecture(clip_b16.get_config(patch_size=16))
    config.name = "clip_b16_open_clip"
    return config
