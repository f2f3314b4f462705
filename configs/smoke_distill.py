"""CPU smoke run of knowledge distillation: a student with under 1/4 of the smoke CLIP model's
parameters learns from that model's similarity distributions plus the contrastive loss.

python main.py --config=configs/smoke.py --workdir=workdir/smoke          # the teacher
python main.py --config=configs/smoke_distill.py --workdir=workdir/smoke_distill
(another teacher: --config.distill.teacher=DIR)
"""

from configs import smoke


def get_config():
    config = smoke.get_config()
    config.name = "smoke_distill"
    config.model.embed_dim = 32
    config.model.image_tower.update(variant=None, width=32, depth=2, mlp_dim=64, num_heads=2,
                                    patch_size=4)
    config.model.text_tower.update(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2)
    # The student's steps are cheap (a fifth of the parameters): it trains twice as long as the
    # teacher did; after 1,200 it had reached about half the teacher's recall.
    config.total_steps = 2400
    config.losses = {"clip": 1.0, "distill": 1.0}
    # The smoke run's workdir: its tokenizer and image size match.
    config.distill.teacher = "workdir/smoke"
    return config
