"""SigLIP So400m/14 at 224 px, big_vision's shape-optimised ViT (width 1152, 27 blocks, MLP 4304)
with a text tower of the same shape, MAP pooling and SigLIP's 32,000-piece vocabulary of 16
tokens: 877.4 M parameters. Sigmoid loss at global batch 32,768.

Fit on a pod first:
    python -m mmjax.tools.aot --config=configs/siglip_so400m14.py --topology=v5e-256 --slices=2
"""

from configs import siglip_b16


def get_config():
    config = siglip_b16.get_config()
    config.name = "siglip_so400m14"
    config.model.embed_dim = 1152
    config.model.vocab_size = 32_000
    config.tokenizer.context_length = 16
    config.model.image_tower.update(variant="So400m/14")
    config.model.text_tower.update(variant=None, width=1152, depth=27, mlp_dim=4304, num_heads=16)
    config.batch_size = 32_768
    config.sharding_rules = "fsdp"
    # Parameters and optimizer state split over 8 chips: one 8-GPU host, or 8 chips of any pod
    # (joined by ICI); the rest of the chips hold more of the batch.
    config.mesh.fsdp = 8
    config.model.remat = "full"
    return config
