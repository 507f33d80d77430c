"""pyfastopt: fastai's optimizers (fastai 2.8.12's numbers and API) as torch-native optimizers."""
from .foundation import L, tensor, tst_param
from .optimizer import Optimizer
from .steppers import (adam_step, average_grad, average_sqr_grad, debias, l2_reg, lamb_step,
                       larc_layer_lr, larc_step, momentum_step, multi_tensor, qhadam_step,
                       radam_step, rms_prop_step, sgd_step, step_stat, weight_decay, lion_step)
from .optimizers import SGD, Adam, Lamb, Larc, Lion, QHAdam, RAdam, RMSProp, ranger
from .wrappers import Lookahead, OptimWrapper, detuplify_pg, pytorch_hp_map, set_item_pg

__version__ = "0.1.0"

__all__ = ["pytorch_hp_map", "Optimizer", "sgd_step", "weight_decay", "l2_reg", "average_grad",
           "average_sqr_grad", "momentum_step", "SGD", "rms_prop_step", "RMSProp", "step_stat",
           "debias", "adam_step", "Adam", "radam_step", "RAdam", "qhadam_step", "QHAdam",
           "larc_layer_lr", "larc_step", "Larc", "lamb_step", "Lamb", "Lookahead", "ranger",
           "detuplify_pg", "set_item_pg", "OptimWrapper", "L", "tensor", "tst_param",
           "multi_tensor", "Lion", "lion_step"]

from .checkpoint import (FastaiCheckpoint, StateDictError, UnsafeCheckpointError,
                         from_torch_state_dict, load_fastai_checkpoint, to_torch_state_dict)

__all__ += ["to_torch_state_dict", "from_torch_state_dict", "load_fastai_checkpoint",
            "FastaiCheckpoint", "StateDictError", "UnsafeCheckpointError"]
