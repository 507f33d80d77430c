"""The built-in optimizers, one file per family: each holds its factory (fastai's signature and
defaults) and its recipe (`recipe.py`): the chains it recognises, its native kernel's hypers
struct and packing, and its torch-fused adapter where torch has one. Importing a family registers
its recipe; `docs/architecture.md` says how to add one."""
from .sgd import SGD
from .rmsprop import RMSProp
from .adam import Adam
from .radam import RAdam, ranger
from .qhadam import QHAdam
from .larc import Larc
from .lamb import Lamb
from .lion import Lion

__all__ = ["SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "Lamb", "Lion", "ranger"]
