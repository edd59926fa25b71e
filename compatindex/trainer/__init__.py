"""The bundled trainer: learn the next compatible version against the stored gallery.

Head training on frozen new-encoder outputs (:func:`upgrade`, :func:`fit_upgrade`), whole-model
training of a backbone (:func:`train_backbone`), and the compatibility gate.

>>> from compatindex.trainer import TrainConfig
>>> TrainConfig().method
'auto'
"""

from .config import BackboneConfig as BackboneConfig
from .config import TrainConfig as TrainConfig
from .data import PairData as PairData
from .data import load_pairs as load_pairs
from .data import pairs_from_arrays as pairs_from_arrays
from .upgrade import fit_method as fit_method
from .upgrade import fit_upgrade as fit_upgrade
from .upgrade import to_space as to_space
from .upgrade import upgrade as upgrade


def __getattr__(name: str):  # torch-backed names load on first use
    if name in ("train_backbone", "CompatModel", "TrainResult", "load_checkpoint", "prototypes_from_model",
                "embed"):
        from . import backbone

        return getattr(backbone, name)
    raise AttributeError(name)


__all__ = ["TrainConfig", "BackboneConfig", "PairData", "load_pairs", "pairs_from_arrays", "fit_method",
           "fit_upgrade", "to_space", "upgrade", "train_backbone", "CompatModel", "TrainResult",
           "load_checkpoint", "prototypes_from_model", "embed"]
