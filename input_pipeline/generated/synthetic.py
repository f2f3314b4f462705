"""A folder of captioned image files as users have them, for tests and the loader benchmark.

Images are the embedded dataset's renderings scaled up, saved as JPEG and PNG, with 1-5 captions
each; among them one grayscale, one RGBA PNG and one CMYK JPEG, and on request broken files
(truncated JPEG, random bytes, an empty file) and an empty caption.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from PIL import Image

from input_pipeline.generated import shapes

PHRASINGS = (
    "{}",
    "a picture of {}",
    "there are {}",
    "an image with {}",
    "{}, on a plain background",
)


def write_captioned_images(directory: str, count: int, *, image_size: int = 64,
                           corrupt: int = 0, test_fraction: float = 0.0,
                           seed: int = 0, first: int = 0, phrasings=PHRASINGS) -> dict:
    """Writes `directory`/images/*.{jpg,png} and `directory`/captions.csv (image, caption, split).

    Returns {"csv": path, "corrupt": [image paths as in the CSV], "special": {kind: path}}.
    The corrupt files are the last `corrupt` images of the train split. The images are the
    embedded dataset's train examples `first`, `first` + 1, ... (beyond its 20,000: new ones).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    rows, corrupt_keys, special = [], [], {}
    num_test = int(round(count * test_fraction))
    for index in range(count):
        split = "test" if index >= count - num_test else "train"
        example = shapes.render_example("train", first + index)
        image = Image.fromarray(example["image"]).resize((image_size, image_size), Image.BILINEAR)
        kind = {0: "grayscale", 1: "rgba", 2: "cmyk"}.get(index, "jpeg" if index % 2 else "png")
        broken = split == "train" and count - num_test - corrupt <= index < count - num_test
        key = f"images/{index:05d}.{'png' if kind in ('png', 'rgba') else 'jpg'}"
        buffer = io.BytesIO()
        if kind == "grayscale":
            image.convert("L").save(buffer, "JPEG", quality=90)
        elif kind == "rgba":
            image.convert("RGBA").save(buffer, "PNG")
        elif kind == "cmyk":
            image.convert("CMYK").save(buffer, "JPEG", quality=90)
        else:
            image.save(buffer, "PNG" if kind == "png" else "JPEG", quality=90)
        data = buffer.getvalue()
        if broken:
            way = len(corrupt_keys) % 3
            data = (data[: len(data) // 3] if way == 0 else
                    rng.bytes(len(data)) if way == 1 else b"")
            corrupt_keys.append(key)
        elif kind in ("grayscale", "rgba", "cmyk"):
            special[kind] = key
        with open(os.path.join(directory, key), "wb") as f:
            f.write(data)
        for phrasing in rng.choice(phrasings, size=rng.integers(1, len(phrasings) + 1),
                                   replace=False):
            rows.append({"image": key, "caption": phrasing.format(example["caption"]),
                         "split": split})
    path = os.path.join(directory, "captions.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return {"csv": path, "corrupt": corrupt_keys, "special": special}
