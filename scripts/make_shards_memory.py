"""Peak resident memory of `make_shards` against the number of images it converts: generated
captioned images (the same size each time), converted in a fresh process, its peak RSS read from
the kernel.

    python scripts/make_shards_memory.py --counts=2000,20000 --image_size=128 --workdir=/tmp/mem
    python scripts/make_shards_memory.py ... --engine=beam   # Beam's local runner, in processes

Runs against this checkout or an older one (run it from that checkout's root), so the two can
be compared. Prints a table and writes WORKDIR/make_shards_memory.json.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_list("counts", ["2000", "20000"], "Numbers of images to convert.")
flags.DEFINE_integer("image_size", 128, "Side of the generated images (half JPEG, half PNG).")
flags.DEFINE_string("workdir", "/tmp/make_shards_memory", "Images and shards go here.")
flags.DEFINE_bool("check_images", True, "False: make_shards(check_images=False), which versions "
                  "before 2026-12-02 did (they had no such option).")
flags.DEFINE_enum("engine", "threads", ["threads", "beam"], "make_shards' engine; for beam the "
                  "peak is the largest of the main process and its worker processes.")
FLAGS = flags.FLAGS

CHILD = """
import resource, sys, time
sys.path.insert(0, {root!r})
from input_pipeline.convert import make_shards
start = time.time()
make_shards.make_shards({csv!r}, {output!r}, examples_per_shard=1000, quiet=True, overwrite=True,
                        {extra})
print(time.time() - start, max(resource.getrusage(who).ru_maxrss
                                for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
"""


def main(argv):
    del argv
    root = os.getcwd()
    sys.path.insert(0, root)
    from input_pipeline.generated import synthetic

    rows = []
    for count in map(int, FLAGS.counts):
        images = os.path.join(FLAGS.workdir, f"images_{count}_{FLAGS.image_size}")
        csv = os.path.join(images, "captions.csv")
        if not os.path.exists(csv):
            synthetic.write_captioned_images(images, count, image_size=FLAGS.image_size)
        size = sum(os.path.getsize(os.path.join(images, "images", n))
                   for n in os.listdir(os.path.join(images, "images")))
        output = os.path.join(FLAGS.workdir, f"shards_{count}")
        code = CHILD.format(root=root, csv=csv, output=output,
                            extra=("" if FLAGS.check_images else "check_images=False, ")
                            + f"engine={FLAGS.engine!r}")
        seconds, peak_kib = subprocess.run([sys.executable, "-c", code], check=True,
                                           capture_output=True, text=True).stdout.split()[-2:]
        rows.append({"images": count, "engine": FLAGS.engine, "image_bytes": size,
                     "seconds": float(seconds),
                     "peak_rss_mib": int(peak_kib) / 1024})
        print(f"| {count} | {size / 2**20:.0f} MiB | {float(seconds):.1f} s | "
              f"{int(peak_kib) / 1024:.0f} MiB |", flush=True)
    with open(os.path.join(FLAGS.workdir, "make_shards_memory.json"), "w") as f:
        json.dump({"checkout": root, "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
