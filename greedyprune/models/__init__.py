"""The convolutional networks of the deep-network experiments, built by :func:`get_model` from a name in
:data:`MODEL_NAMES`.

* ``zoo.py`` - the CIFAR ResNets, ResNet-18/34, MobileNetV2, VGG-16, the ``get_model`` registry (``_BUILDERS``)
  and the helpers that find a model's classifier, stem and residual-stream layers;
* ``mobilenetv3.py`` - MobileNetV3-Small (``get_model("mobilenetv3_small")``).

``from greedyprune.models import ...`` gives what the single module ``greedyprune/models.py`` gave before it
became this package.
"""
from .mobilenetv3 import MobileNetV3Small
from .zoo import (MODEL_NAMES, VGG, BasicBlock, InvertedResidual, MobileNetV2, PadShortcut, ResNet, classifier_layer,
                  get_model, init_weights, skip_layers, stem_conv)

__all__ = [
    "MODEL_NAMES",
    "VGG",
    "BasicBlock",
    "InvertedResidual",
    "MobileNetV2",
    "MobileNetV3Small",
    "PadShortcut",
    "ResNet",
    "classifier_layer",
    "get_model",
    "init_weights",
    "skip_layers",
    "stem_conv",
]
