"""trainer: the data layer (``trainer.data``), the DLRM-style model over TorchRec-shaped input,
one training core with pluggable embedding backends (in-process FBGEMM, the parameter
server), update strategies, progressive validation, and PS-mode training on Ray Train.

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
    "TrainerCore": "trainer.core",
    "LocalBackend": "trainer.backends",
    "ps_config_for": "trainer.backends",
    "BackendEmbeddingBagCollection": "trainer.sparse",
    "LocalTrainer": "trainer.local",
    "ProgressiveValidator": "trainer.metrics",
    "auc": "trainer.metrics",
    "run_ps_training": "trainer.run",
    "TrainJob": "trainer.config",
    "FailurePolicy": "trainer.failure",
    "DataFileError": "trainer.failure",
    "follow_data_files": "trainer.data.follow",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (lazy exports, PEP 562)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
