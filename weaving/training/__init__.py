"""Fine-tuning: the FineTuner LightningModule and the TaskVectorWriter callback."""

from weaving.training.callbacks import TaskVectorWriter
from weaving.training.finetune import FineTuner, WarmupCosine

__all__ = ["FineTuner", "TaskVectorWriter", "WarmupCosine"]
