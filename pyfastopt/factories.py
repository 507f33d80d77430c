"""fastai's optimizer factories (spec §4), kept importable from here; each lives with its recipe
in `pyfastopt/optimizers/<family>.py`."""
from .optimizers import SGD, Adam, Lamb, Larc, Lion, QHAdam, RAdam, RMSProp, ranger

__all__ = ["SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "Lamb", "Lion", "ranger"]
