"""open_clip's own training loader on a CSV or webdataset tars, timed as
input_pipeline/benchmarks/loader.py
times mmjax's.

Runs in an environment with open_clip_torch (and its training extras: pandas, braceexpand,
webdataset); input_pipeline/benchmarks/loader.py calls it with --open_clip_python. Prints JSON.
"""

import argparse
import json
import time
from types import SimpleNamespace

import open_clip
from open_clip_train.data import get_csv_dataset, get_wds_dataset

parser = argparse.ArgumentParser()
parser.add_argument("--csv", help="a tab-separated CSV (filepath, title)")
parser.add_argument("--wds", help="webdataset tars as a brace pattern, e.g. dir/{00000..00007}.tar "
                    "(open_clip's --dataset-type webdataset)")
parser.add_argument("--num_samples", type=int, help="samples in the tars (--wds)")
parser.add_argument("--batch_size", type=int, default=128)
parser.add_argument("--batches", type=int, default=10)
parser.add_argument("--warmup", type=int, default=2)
parser.add_argument("--workers", type=int, default=0)
args = parser.parse_args()

# What open_clip's training uses for ViT-B/16: RandomResizedCrop(224, scale=(0.9, 1.0), bicubic),
# RGB, ToTensor, Normalize(OpenAI mean/std); its CLIP BPE tokenizer with 77 tokens.
preprocess = open_clip.image_transform(224, is_train=True)
tokenizer = open_clip.get_tokenizer("ViT-B-16")
if args.wds:
    options = SimpleNamespace(train_data=args.wds, train_num_samples=args.num_samples,
                              train_data_upsampling_factors=None, dataset_resampled=False,
                              seed=0, batch_size=args.batch_size, workers=args.workers,
                              world_size=1)
    loader = get_wds_dataset(options, preprocess, is_train=True, tokenizer=tokenizer).dataloader
else:
    options = SimpleNamespace(train_data=args.csv, csv_img_key="filepath", csv_caption_key="title",
                              csv_separator="\t", batch_size=args.batch_size,
                              workers=args.workers, distributed=False)
    loader = get_csv_dataset(options, preprocess, is_train=True, tokenizer=tokenizer).dataloader


def batches():
    while True:
        yield from loader


iterator = batches()
for _ in range(args.warmup):
    next(iterator)
started = time.perf_counter()
for _ in range(args.batches):
    images, texts = next(iterator)
elapsed = time.perf_counter() - started
assert tuple(images.shape) == (args.batch_size, 3, 224, 224) and texts.shape[1] == 77
print(json.dumps({"images_per_sec": args.batches * args.batch_size / elapsed}))
