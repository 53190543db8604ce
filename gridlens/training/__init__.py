"""Training GridGPTs (one, a population, or with torchrun) and evaluating them.

from gridlens.training import TrainConfig, train, evaluate, TestSet
cfg = TrainConfig.build(preset="cpu", overrides={"steps": 100})
train(cfg, "runs/demo")
"""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "EvalResult": "evaluate",
    "PREDICTED_STRUCTURES": "evaluate",
    "PRESETS": "config",
    "QuizStream": "data",
    "TestSet": "data",
    "TrainConfig": "config",
    "evaluate": "evaluate",
    "get_preset": "config",
    "lr_at": "trainer",
    "quiz_hash": "data",
    "read_log": "trainer",
    "train": "trainer",
    "train_population": "population",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
