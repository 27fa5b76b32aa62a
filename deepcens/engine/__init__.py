"""Training: the deepcens Trainer, training loops, schedules, checkpoints and hooks."""
from deepcens.engine.checkpoint import DeepcensCheckpointer  # noqa: F401
from deepcens.engine.loops import TRAIN_LOOP_REGISTRY, build_train_loop  # noqa: F401
from deepcens.engine.trainer import Trainer  # noqa: F401
from deepcens.engine import schemes  # noqa: F401  (registers Mix / Seq / Fix / Shu / Cho / Acc loops)
from deepcens.engine import nas_search  # noqa: F401  (registers the NasSearch loop)
from deepcens.engine import dints_search  # noqa: F401,E402  (registers early_stopping / dints_search loops)
