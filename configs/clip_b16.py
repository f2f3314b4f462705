"""CLIP ViT-B/16 at 224 px with open_clip's text tower (12 layers, width 512, context 77).

Benchmark: python -m mmjax.bench --config=configs/clip_b16.py
Train:     python main.py --config=configs/clip_b16.py --workdir=DIR \
               --config.data.train=shards:/data/cc3m:train --config.data.eval=tfds:coco_captions:val
"""

from configs import smoke


def get_config(patch_size: int = 16):
    config = smoke.get_config()
    config.name = f"clip_b{patch_size}"
    config.total_steps = 100_000
    # Per-device batch 256 on one accelerator; scale with the mesh.
    config.batch_size = 256
    config.log_every_steps = 100
    config.eval_every_steps = 5_000
    config.checkpoint_every_steps = 2_000
    config.data.image_size = 224
    config.data.eval_batch_size = 512
    # open_clip's training and evaluation transforms (RandomResizedCrop scale 0.9-1; resize the
    # shorter side, center crop), and its pixel normalisation.
    config.data.train_preprocess = "decode_jpeg_and_inception_crop(scale=(0.9, 1.0))"
    config.data.eval_preprocess = "decode|resize_shorter|center_crop"
    config.data.normalization = "clip"
    # Byte tokens until a CLIP BPE vocabulary is given; the model keeps open_clip's vocabulary size.
    config.tokenizer.name = "bytes"
    config.tokenizer.context_length = 77
    del config.tokenizer["vocabulary_file"]
    config.model.embed_dim = 512
    config.model.vocab_size = 49_408
    config.model.dtype = "bfloat16"
    config.model.image_tower.update(variant=f"B/{patch_size}", pooling="cls")
    config.model.text_tower.update(variant="clip", context_length=77)
    config.learning_rate = 5e-4
    config.warmup_steps = 2_000
    config.optimizer.weight_decay = 0.2
    return config
