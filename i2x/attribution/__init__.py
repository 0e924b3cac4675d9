"""Attribution: CAM methods (one small module each) and the attributor that runs them all at once.

A new method is one small module with a :class:`CamMethod` subclass decorated by :func:`register`,
imported below; it then appears in ``--methods``, the store and the report with no other edit.
"""

from i2x.attribution.attributor import Attributor, BatchResult
from i2x.attribution.base import INTERVENTIONS, METHODS, CamMethod, InterventionMethod, get_methods, register, \
    unregister
from i2x.attribution.display import display_maps
from i2x.attribution.gradcam import GradCAM
from i2x.attribution.gradcampp import GradCAMPlusPlus
from i2x.attribution.layercam import LayerCAM
from i2x.attribution.occlusion import Occlusion
from i2x.attribution.fusion import DualEvidence
from i2x.attribution.layers import find_target_layer, get_layer, prefer_channels_last

__all__ = ["Attributor", "BatchResult", "CamMethod", "DualEvidence", "GradCAM", "GradCAMPlusPlus", "INTERVENTIONS",
           "InterventionMethod", "LayerCAM", "METHODS", "Occlusion",
           "display_maps", "find_target_layer", "get_layer", "get_methods", "prefer_channels_last", "register",
           "unregister"]
