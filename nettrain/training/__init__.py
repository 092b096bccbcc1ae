"""Training: the loop and the parts it is made of.

=================  ===============================================================
``trainer``        :class:`Trainer` and :func:`train`: epochs, validation, resume
``step``           :class:`TrainStep`: forward, loss, backward, clip, guard, update
``evaluation``     :class:`EvalLoop`: a model in eval mode over a split, as sums
``stats``          :class:`EpochStats`: the epoch's running sums and its metric row
``monitors``       :class:`BestTracker` and :class:`EarlyStopping`
``recorder``       :class:`RunRecorder`: metrics, checkpoints and files of the run folder
``signals``        :class:`StopRequest`: SIGINT/SIGTERM stop the run after a step
``reporting``      :class:`Reporter` (progress hooks) and :class:`TrainResult`
=================  ===============================================================
"""

from .evaluation import EvalLoop, EvalSums
from .monitors import BestTracker, EarlyStopping
from .recorder import RunRecorder
from .reporting import Reporter, TrainResult
from .signals import StopRequest
from .stats import EpochStats
from .step import BatchSums, NonFiniteStep, StepResult, TrainStep
from .trainer import Trainer, train

__all__ = [
    "BatchSums", "BestTracker", "EarlyStopping", "EpochStats", "EvalLoop", "EvalSums", "NonFiniteStep",
    "Reporter", "RunRecorder", "StepResult", "StopRequest", "TrainResult", "TrainStep", "Trainer", "train",
]
