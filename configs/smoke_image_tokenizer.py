"""CPU smoke run of the image tokenizer (issue 16, stage 1): a ViT autoencoder with FSQ on the
embedded mmjax_shapes images, 32 px -> an 8x8 grid of tokens (4 px patches) from 1,000 codes,
decoded through the convolutional pixel head.

python main.py --config=configs/smoke_image_tokenizer.py --workdir=/tmp/mmjax_tokenizer

The eval reports reconstruction error (normalised units and PSNR of 8-bit pixels) and code usage
(perplexity of the code distribution, share of the 1,000 codes used). What the judge reads on
its reconstructions, and how each choice here moved it: BENCHMARKS.md ("Image tokenizer").
"""

from configs import common, smoke


def get_config():
    config = common.as_image_tokenizer(smoke.get_config(), encoder="mu/4", decoder="mu/4",
                                       levels=(8, 5, 5, 5))
    config.name = "smoke_image_tokenizer"
    # 32 features per pixel and two 3x3 convolutions draw the small shapes' edges that a
    # linear patch head blurs (the judge's colour-shape on reconstructions 0.40 -> 0.52).
    config.model.image_decoder.pixel_channels = 32
    # Batch 32 at twice the learning rate: four updates per image seen where batch 128 made
    # one learnt more in fewer minutes (1,200 steps of 128: 0.52; 2,400 of 32: 0.64; 8e-3
    # learnt slower).
    config.batch_size = 32
    config.learning_rate = 4e-3
    # About 3.8 steps/s alone on 2 cores: 1,800 steps leave the run inside its 10 minutes.
    config.total_steps = 1800
    config.eval_every_steps = 900
    config.checkpoint_every_steps = 900
    return config
