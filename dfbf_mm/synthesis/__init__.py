"""Synthetic training images by inverting the unpruned teacher (spec §2): DeepInversion or a
meta-learned generator (Fast-Datafree).

Importing registers ``DeepInversionSynthesizer``, ``GeneratorSynthesizer`` (SYNTHESIZERS) and ``SyntheticImageDataset``
(DATASETS).
"""
from .adversary import FeatureAdversary
from .bn_statistics import BNStatisticsLoss, bn_layers
from .dataset import SyntheticImageDataset, batch_seed
from .deepinversion import DeepInversionSynthesizer
from .generator import GeneratorSynthesizer
from .image_io import from_uint8, grid_image, save_grid, save_pngs, to_uint8, write_image
from .noise_dataset import NoiseImageDataset
from .online_pool import OnlinePool
from .inversion_target import INVERT, TASKS, ClassifierLogits, ModelTensors, inversion_target
from .presets import GENERATOR_PRESETS, PRESETS, get_generator_preset, get_preset
from .priors import l2_prior, total_variation

__all__ = ['FeatureAdversary', 'OnlinePool', 'NoiseImageDataset', 'BNStatisticsLoss', 'bn_layers', 'SyntheticImageDataset',
           'batch_seed', 'DeepInversionSynthesizer', 'GeneratorSynthesizer', 'from_uint8', 'grid_image', 'write_image',
           'save_grid', 'save_pngs', 'to_uint8', 'TASKS', 'INVERT', 'ClassifierLogits', 'ModelTensors',
           'inversion_target',
           'PRESETS', 'get_preset', 'GENERATOR_PRESETS', 'get_generator_preset', 'l2_prior', 'total_variation']
