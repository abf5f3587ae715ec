"""Training: strategies and launch, objectives, the loop, the embedding / autoencoder / verifier drivers, tuning and
progress output.

`run_training` (in `reprlearn.training.run`) is imported on first use, so `reprlearn.training.tuning` or
`reprlearn.training.strategies` can be imported without the drivers.

Example:
    from reprlearn.config import load_config
    from reprlearn.training import run_training
    report = run_training(load_config("configs/demo.yaml"), "runs/demo")
"""

__all__ = ["run_training"]


def __getattr__(name: str):
    if name == "run_training":
        from reprlearn.training.run import run_training

        return run_training
    raise AttributeError(f"module 'reprlearn.training' has no attribute {name!r}")
