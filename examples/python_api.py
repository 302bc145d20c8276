import r18lab

# a run: a dict (or a YAML path, or an r18lab.config.RunConfig), overrides as on the command line
config = {
    "data": {"source": "digits", "augment": {"padding": 2, "flip": False}},  # embedded 16×16 digits
    "model": {"name": "resnet18", "width": 0.125, "heads": ["main", "fr"]},
    "optim": {"lr": 0.1},
    "train": {"epochs": 5, "batch_size": 64, "threads": 1, "progress": "none"},  # 1 thread: fastest this small
}
summary = r18lab.train(config, out="runs/api-demo", overrides=["seed=0"], overwrite=True)
print(f"main head: {summary['final']['eval/main/acc']:.1f}% after {summary['train_seconds']:.1f} s")

# the weights with what they were trained with: .model (a torch module), .preprocessing, .identity
loaded = r18lab.load_model("runs/api-demo")  # the run folder, or its model.safetensors
print(loaded.preprocessing.classes, loaded.preprocessing.input_size)

# accuracy of every head, the images normalised with the weights' stored statistics
scores = r18lab.evaluate(loaded, "digits", split="test")
print({k: round(v, 2) for k, v in scores.items() if k.endswith("/acc")})

# per-sample logits of every head and the pooled features, as numpy arrays
preds = r18lab.predict(loaded, "digits", split="test")
print(preds.logits["fr"].shape, preds.features.shape, preds.accuracy())
