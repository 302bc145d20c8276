"""Tiny configurations that train in about a second on one CPU thread."""

TINY = [
    "data.source=synthetic", "data.options={num_classes: 4, image_size: 8, n: 128}",
    "model.width=0.0625", "train.batch_size=32", "train.epochs=2", "train.progress=none",
    "optim.lr=0.05", "schedule.name=constant",
]


def tiny(*extra: str) -> list[str]:
    return [*TINY, *extra]


def tiny_recipe(epochs: int = 3, extra: str = "") -> str:
    """A protocol recipe of two methods at 40 labels, one seed, on tiny synthetic data (YAML text)."""
    return f"""
protocol: {{labels: [40], seeds: [0], methods: [resnet18, fr-resnet18]}}
data: {{source: synthetic, options: {{num_classes: 4, image_size: 8, n: 128}}}}
model: {{width: 0.0625}}
optim: {{lr: 0.05}}
schedule: {{name: constant}}
train: {{batch_size: 32, epochs: {epochs}, progress: none}}
{extra}"""


def interrupt_at(monkeypatch, at_step: int) -> None:
    """Make the engine raise KeyboardInterrupt (as Ctrl-C would) when it is about to run step `at_step` + 1."""
    from r18lab.train.engine import Trainer
    original = Trainer._train_step

    def step(self, x, y, step):
        if step == at_step:
            raise KeyboardInterrupt
        return original(self, x, y, step)

    monkeypatch.setattr(Trainer, "_train_step", step)


def load_benchmark(name: str):
    """The module of `benchmarks/<name>.py` (benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
