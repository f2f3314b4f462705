"""CLIP ViT-L/14 at 224 px, open_clip's shape (text tower: width 768, 12 layers): 427.6 M
parameters. Global batch 90,112 with DataComp-XL's learning rate and warmup.

Fit on a pod first: python -m mmjax.tools.aot --config=configs/clip_l14.py --topology=v5p-512
"""

from configs import clip_b16


def get_config():
    config = clip_b16.get_config(patch_size=14)
    config.name = "clip_l14"
    config.model.embed_dim = 768
    config.model.image_tower.update(variant="L/14")
    config.model.text_tower.update(variant="B")
    config.batch_size = 90_112
    config.learning_rate = 1e-3
    config.warmup_steps = 10_000
    # Parameters, moments and activations of a large tower exceed a chip's memory at this
    # batch without FSDP and rematerialised blocks.
    config.sharding_rules = "fsdp"
    # Parameters and optimizer state split over 8 chips: one 8-GPU host, or 8 chips of any pod
    # (joined by ICI); the rest of the chips hold more of the batch.
    config.mesh.fsdp = 8
    config.model.remat = "full"
    return config
