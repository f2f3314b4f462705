"""Two shard sets for trying a weighted mixture (configs/smoke_mixture.py) beside the embedded
dataset: new renderings of its train distribution (examples 20,000 and on, which the embedded
20,000 do not hold) as a user's captioned JPEG and PNG files would be, converted by make_shards.

    python -m input_pipeline.generated.mixture_demo --out=data/mixture_demo

writes OUT/large (4,000 images at 64 px) and OUT/small (2,000 at 24 px); each is skipped when
already written.
"""

from __future__ import annotations

import argparse
import tempfile

from input_pipeline.convert import make_shards
from input_pipeline.generated import synthetic
from mmjax import paths

# name -> (images, their size in pixels, the first embedded-train index they render)
SETS = {"large": (4000, 64, 20_000), "small": (2000, 24, 24_000)}


def write_demo_shards(out: str, quiet: bool = False) -> dict[str, str]:
    """The shard sets' folders by name, written where missing."""
    written = {}
    for name, (count, size, first) in SETS.items():
        output = paths.join(out, name)
        if not paths.exists(paths.join(output, "metadata.json")):
            with tempfile.TemporaryDirectory() as raw:
                # Plain captions: the words the embedded dataset's tokenizer knows.
                files = synthetic.write_captioned_images(raw, count, image_size=size,
                                                         first=first, phrasings=("{}",))
                make_shards.make_shards(files["csv"], output, examples_per_shard=1000,
                                        quiet=quiet)
        written[name] = output
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Folder for the shard sets (or gs://...).")
    args = parser.parse_args()
    for name, output in write_demo_shards(args.out).items():
        print(f"{name}: shards:{output}:train")


if __name__ == "__main__":
    main()
