"""Training GridGPTs (one, a population, or with torchrun) and evaluating them.

from gridlens.training import TrainConfig, train, evaluate, TestSet
cfg = TrainConfig.build(preset="cpu", overrides={"steps": 100})
train(cfg, "runs/demo")
"""

from gridlens.training.config import PRESETS, TrainConfig, get_preset
from gridlens.training.data import QuizStream, TestSet, quiz_hash
from gridlens.training.evaluate import PREDICTED_STRUCTURES, EvalResult, evaluate
from gridlens.training.population import train_population
from gridlens.training.trainer import lr_at, read_log, train

__all__ = [
    "PREDICTED_STRUCTURES",
    "PRESETS",
    "EvalResult",
    "QuizStream",
    "TestSet",
    "TrainConfig",
    "evaluate",
    "get_preset",
    "lr_at",
    "quiz_hash",
    "read_log",
    "train",
    "train_population",
]
