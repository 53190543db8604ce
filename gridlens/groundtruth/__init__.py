"""Algorithmic tasks with known circuits: IIT / SIIT training, the shipped models, scoring
interpretability methods against the ground truth, and the scoreboard."""

from gridlens.lazy import lazy_exports

_EXPORTS = {
    "Benchmark": "spec",
    "SAE": "sae",
    "SAEReport": "sae",
    "SHIPPED": "shipped",
    "TASKS": "tasks",
    "Task": "tasks",
    "TrainConfig": "iit",
    "circuit_discovery": "scoring",
    "circuit_scores": "figures",
    "combined_benchmark": "spec",
    "evaluate": "iit",
    "f1_matrix": "scoring",
    "get_benchmark": "spec",
    "get_task": "tasks",
    "head_site": "spec",
    "linear_assignment": "scoring",
    "load_run": "iit",
    "make_model": "iit",
    "markdown": "scoreboard",
    "mlp_site": "spec",
    "resolve_run": "shipped",
    "roc_auc": "scoring",
    "sae_matrix": "figures",
    "sae_scores": "figures",
    "save_run": "iit",
    "score_mlp": "scoring",
    "scoreboard": "scoreboard",
    "single_benchmark": "spec",
    "train": "iit",
    "train_sae": "sae",
    "training_curves": "figures",
    "verify": "shipped",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
