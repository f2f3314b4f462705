"""A small CLIP whose shapes open_clip can build too: the CPU step compared side by side.

ViT width 128, depth 4, 4 heads, MLP 512, patch 8 at 64 px, class-token pooling; text width 128,
depth 4, 4 heads, context 32, CLIP's vocabulary of 49,408; embedding 128; batch 64; float32;
AdamW. scripts/cpu_step_side_by_side.py times it against open_clip's step on the same shapes:

    python -m mmjax.tools.benchmark --config=configs/bench_cpu_clip.py
"""

from mmjax import defaults


def get_config():
    config = defaults.base_config()
    config.name = "bench_cpu_clip"
    config.batch_size = 64
    config.data.image_size = 64
    config.data.normalization = "clip"
    # Byte-laid-out token rows of 32; the model keeps CLIP's vocabulary size (the embedding
    # table and its gradient are part of what the CPU step pays).
    config.tokenizer.context_length = 32
    config.model.vocab_size = 49_408
    config.model.embed_dim = 128
    config.model.image_tower.update(variant=None, width=128, depth=4, num_heads=4, mlp_dim=512,
                                    patch_size=8, pooling="cls")
    config.model.text_tower.update(variant=None, width=128, depth=4, num_heads=4, mlp_dim=512)
    # A compute-bound CPU step: freed host memory is kept for the next step (defaults.py).
    config.reuse_host_memory = True
    # open_clip's default: no gradient clipping (both sides do the same work).
    config.optimizer.grad_clip_norm = 0.0
    return config
