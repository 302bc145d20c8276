"""Write an image folder with no predefined split, <class>/<n>.png, from some classes of a CIFAR split: a small
stand-in for Caltech-style data (`data.source=FOLDER`: r18lab draws a stratified, seeded train/test split, saves it
beside the run and reuses it).

    python examples/cifar_folder.py ../shared/data/cifar10-jpeg.tar.gz /tmp/animals --split test \
        --classes bird,cat,deer,dog,frog,horse
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from r18lab.data.loading import load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="CIFAR-10 (the shared JPEG archive or any r18lab source)")
    p.add_argument("out", help="folder to create (must not exist)")
    p.add_argument("--split", default="test", help="the split whose images are written (default: test)")
    p.add_argument("--classes", default="", help="comma-separated class names (default: all)")
    p.add_argument("--per-class", type=int, default=0, help="at most this many images per class (0: all)")
    a = p.parse_args()
    out = Path(a.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; choose a new folder")
    data = load(a.source, split=a.split)
    names = [c.strip() for c in a.classes.split(",") if c.strip()] or list(data.classes)
    unknown = [c for c in names if c not in data.classes]
    if unknown:
        raise SystemExit(f"error: unknown class {unknown[0]!r}; the classes are {', '.join(data.classes)}")
    for name in names:
        rows = np.flatnonzero(data.labels == list(data.classes).index(name))
        rows = rows[:a.per_class] if a.per_class > 0 else rows
        folder = out / name
        folder.mkdir(parents=True)
        for i, r in enumerate(rows):
            Image.fromarray(data.images[r]).save(folder / f"{i:05d}.png")
        print(f"{name}: {len(rows)} images")


if __name__ == "__main__":
    main()
