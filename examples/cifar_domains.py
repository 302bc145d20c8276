"""Write an image folder of three "domains" made from CIFAR-10 by colour transforms — photo (unchanged), grey, invert —
as <domain>/<class>/<n>.png, for trying leave-one-domain-out (`data.train_split=[photo, grey] data.test_split=invert`).

    python examples/cifar_domains.py ../shared/data/cifar10-jpeg.tar.gz /tmp/cifar_domains --per-class 200
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from r18lab.data.domains import apply_domain
from r18lab.data.loading import load

DOMAINS = {"photo": None, "grey": "grayscale", "invert": "invert"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="CIFAR-10 (the shared JPEG archive or any r18lab source)")
    p.add_argument("out", help="folder to create (must not exist)")
    p.add_argument("--per-class", type=int, default=200, help="images per class and domain (disjoint across domains)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; choose a new folder")
    train = load(a.source, split="train")
    rng = np.random.default_rng(a.seed)
    for c, name in enumerate(train.classes):
        rows = rng.permutation(np.flatnonzero(train.labels == c))
        for d, (domain, transform) in enumerate(DOMAINS.items()):
            mine = rows[d * a.per_class:(d + 1) * a.per_class]
            x = torch.from_numpy(train.images[mine]).permute(0, 3, 1, 2).float() / 255
            if transform is not None:
                x = apply_domain(transform, x)
            imgs = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            folder = out / domain / name
            folder.mkdir(parents=True)
            for i, img in enumerate(imgs):
                Image.fromarray(img).save(folder / f"{i:04d}.png")
    print(f"wrote {out}: {len(DOMAINS)} domains × {len(train.classes)} classes × {a.per_class} images")


if __name__ == "__main__":
    main()
