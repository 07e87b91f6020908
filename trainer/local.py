"""LocalTrainer: the training core with in-process embeddings (FBGEMM TBE), no Ray.

It is the reference that PS-mode runs must match in sync mode (they run the same core and
the same shard code) and the engine of the quality benchmark.
"""

from __future__ import annotations

from paramserver.config import PSConfig
from trainer.backends import LocalBackend, ps_config_for
from trainer.config import ModelConfig, TrainConfig
from trainer.core import TrainerCore


class LocalTrainer(TrainerCore):
    """:class:`TrainerCore` over a :class:`LocalBackend` built from the spec and configs.

    >>> t = LocalTrainer(load_spec("taobao"), ModelConfig(), TrainConfig(seed=1))  # doctest: +SKIP
    >>> t.step_file(batch, "part-20171126T010000Z.parquet")                        # doctest: +SKIP
    FileMetrics(file='part-...', examples=4012, positives=389, auc=0.61, log_loss=0.33, ...)
    """

    def __init__(
        self, spec, model_cfg: ModelConfig, train_cfg: TrainConfig, ps: PSConfig | None = None, model=None
    ) -> None:
        self.ps_options = ps or PSConfig()
        super().__init__(
            spec,
            model_cfg,
            train_cfg,
            LocalBackend(ps_config_for(spec, train_cfg, self.ps_options, model=model_cfg)),
            model=model,
        )

    def fresh(self) -> "LocalTrainer":
        """A new, untrained trainer with the same spec and configs (a full retrain starts here)."""
        return LocalTrainer(self.spec, self.model_cfg, self.cfg, self.ps_options)

    def state_dict(self) -> dict:
        """The core's state plus the embeddings: {table: {"ids", "rows", "state"}}, ids ascending."""
        return {**super().state_dict(), "embeddings": self.backend.table_state()}
