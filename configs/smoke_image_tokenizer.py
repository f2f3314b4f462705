"""CPU smoke run of the image tokenizer (issue 16, stage 1): a ViT autoencoder with FSQ on the
embedded mmjax_shapes images, 32 px -> an 8x8 grid of tokens from 1,000 codes.

python main.py --config=configs/smoke_image_tokenizer.py --workdir=/tmp/mmjax_tokenizer

The eval reports reconstruction error (normalised units and PSNR of 8-bit pixels) and code usage
(perplexity of the code distribution, share of the 1,000 codes used).
"""

from configs import common, smoke


def get_config():
    config = common.as_image_tokenizer(smoke.get_config(), encoder="mu/4", decoder="mu/4",
                                       levels=(8, 5, 5, 5))
    config.name = "smoke_image_tokenizer"
    # 1,200 steps took 9 min 56 s on 2 cores (PSNR 28.6 dB); 800 took 8 min 0 s from an empty
    # data directory (PSNR 27.3 dB).
    config.total_steps = 800
    config.eval_every_steps = 400
    config.checkpoint_every_steps = 400
    return config
