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
    return config
