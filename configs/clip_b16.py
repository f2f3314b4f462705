"""CLIP ViT-B/16 at 224 px with open_clip's text tower (12 layers, width 512, context 77).

Benchmark: python -m mmjax.tools.benchmark --config=configs/clip_b16.py
Train:     python main.py --config=configs/clip_b16.py --workdir=DIR \
               --config.data.train=shards:/data/cc3m:train --config.data.eval=tfds:coco_captions:val
"""

from mmjax import defaults


def get_config(patch_size: int = 16):
    config = defaults.base_config()
    config.name = f"clip_b{patch_size}"
    # open_clip's pixel normalisation (its transforms are the base config's).
    config.data.normalization = "clip"
    # Byte tokens until a CLIP BPE vocabulary is given; the model keeps open_clip's vocabulary size.
    config.model.vocab_size = 49_408
    config.model.dtype = "bfloat16"
    config.model.image_tower.update(variant=f"B/{patch_size}", pooling="cls")
    return config
