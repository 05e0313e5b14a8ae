"""distill: teach the pruned student backbone to reproduce the teacher's feature maps."""
from .distiller import DataFreeDistiller
from .feature_loss import DEPTH_WEIGHT_PRESETS, FeatureMimicLoss, depth_weights
from .feature_taps import FeatureRecorder, select_taps

__all__ = ['DataFreeDistiller', 'FeatureMimicLoss', 'FeatureRecorder', 'DEPTH_WEIGHT_PRESETS',
           'depth_weights', 'select_taps']
