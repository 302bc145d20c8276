"""Tiny configurations that train in about a second on one CPU thread."""

TINY = [
    "data.source=synthetic", "data.options={num_classes: 4, image_size: 8, n: 128}",
    "model.width=0.0625", "train.batch_size=32", "train.epochs=2", "train.progress=none",
    "optim.lr=0.05", "schedule.name=constant",
]


def tiny(*extra: str) -> list[str]:
    return [*TINY, *extra]
