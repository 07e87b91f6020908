"""trainer: the data layer (``trainer.data``), the DLRM-style model, the local reference
trainer, update strategies, progressive validation, and PS-mode training on Ray Train.

The public names are imported lazily (PEP 562) so that ``import trainer.data`` and the CLI's
``--help`` do not pay for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "trainer.config",
    "TrainConfig": "trainer.config",
    "Strategy": "trainer.config",
    "DLRM": "trainer.model",
    "LocalTrainer": "trainer.local",
    "ProgressiveValidator": "trainer.metrics",
    "auc": "trainer.metrics",
    "PSTrainerCore": "trainer.ps_trainer",
    "run_ps_training": "trainer.ps_trainer",
    "follow_data_files": "trainer.data.follow",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
