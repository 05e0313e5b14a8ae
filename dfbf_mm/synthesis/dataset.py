"""SyntheticImageDataset: DeepInversion images as an ordinary MMEngine training dataset.

No real image is read. ``prepare(teacher, task)`` fills an on-disk cache batch by batch
(resumable, sharded over ranks); afterwards items are ``dict(inputs=Tensor[C, H, W])`` in the
teacher's normalised input space, which MMEngine's ``pseudo_collate`` and ``DefaultSampler``
handle like any other dataset.
"""
import hashlib
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..registry import DATASETS, SYNTHESIZERS
from ..stock_model import pixel_range
from .cache import BatchCache, cache_key, hash_state_dict
from .deepinversion import check_batch_shape
from .inversion_target import INVERT, TASKS, inversion_target, num_classes_of


def batch_seed(seed: int, index: int) -> int:
    """Seed of batch ``index``: a hash of (seed, index), so batches are independent streams."""
    digest = hashlib.sha256(f'dfbf-synthesis:{seed}:{index}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') & (2**63 - 1)


@DATASETS.register_module()
class SyntheticImageDataset(Dataset):
    """``num_images`` DeepInversion images from a teacher, cached per batch under ``cache_dir``.

    Args:
        num_images: dataset length; the last batch is synthesised whole (BN statistics need
            the full batch) and only its first images are used.
        batch_size: images optimised together (>= 2); fewer ``num_images`` than that make one
            batch of ``max(2, num_images)`` instead (the cache key has that size, so the caches
            of ``num_images >= batch_size`` are the same as before).
        image_size: (H, W) of every image.
        synthesizer: config of a ``SYNTHESIZERS`` type, e.g. ``dict(type='DeepInversionSynthesizer',
            preset='fast')``.
        cache_dir: root of the cache; batches live in ``cache_dir/<key>/``.
        seed: base seed; batch b uses :func:`batch_seed` (seed, b).
        num_classes: classes for the balanced CE labels (default: the teacher head's).
        invert: what is inverted for detection/pose: ``'auto'``/``'backbone'`` (the backbone's
            BN statistics) or ``'model'`` (the whole model's: neck and head too); see
            :func:`inversion_target`.
    """

    def __init__(self, num_images: int, batch_size: int, image_size: Tuple[int, int],
                 synthesizer: dict, cache_dir: str, seed: int = 0, num_classes: Optional[int] = None,
                 invert: str = 'auto'):
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f'num_images: must be a positive integer, got {num_images!r}')
        check_batch_shape(batch_size, image_size)
        if not cache_dir:
            raise ValueError('cache_dir: a directory for the synthetic batches is required')
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f'num_classes: must be a positive integer, got {num_classes!r}')
        if invert not in INVERT:
            raise ValueError(f'invert: {invert!r} is not one of {", ".join(INVERT)}')
        self.invert = invert
        self.num_images = num_images
        # a full batch larger than the dataset would be synthesised and mostly thrown away
        self.batch_size = max(2, min(batch_size, num_images))
        if self.batch_size < batch_size:
            print_log(f'synthetic_data: batch_size {batch_size} > num_images {num_images}; '
                      f'synthesising one batch of {self.batch_size}', logger='current')
        self.image_size = tuple(image_size)
        if isinstance(synthesizer, dict):
            # _scope_: SYNTHESIZERS lives in scope dfbf_mm, not in the config's default scope.
            synthesizer = SYNTHESIZERS.build(dict(synthesizer, _scope_='dfbf_mm'))
        self.synthesizer = synthesizer
        self.cache_dir = cache_dir
        self.seed = int(seed)
        self.num_classes = num_classes
        self.num_batches = -(-num_images // self.batch_size)
        self.cache: Optional[BatchCache] = None
        self._shape = None
        self._batches: Dict[int, torch.Tensor] = {}
        self.stats: Dict[str, float] = {}
        self.batch_stats: List[dict] = []
        # online mode (synthesis/online_pool.py): batches added while fine-tuning, and which
        # of all images (offline first, then the added ones) this epoch's indices map to
        self.pool: List[torch.Tensor] = []
        self.task: Optional[str] = None
        self.label_classes: Optional[int] = None
        self.index_map: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.num_images

    def prepare(self, teacher_model: nn.Module, task: str, rank: int = 0, world_size: int = 1,
                progress: bool = True) -> Dict[str, int]:
        """Synthesise this rank's missing batches into the cache: batch b is rank
        ``b % world_size``'s (a GeneratorSynthesizer lays out its own streams, ``fill_cache``).

        The caller synchronises ranks (barrier) before reading; returns counts of batches
        ``generated`` and ``reused`` by this rank.
        """
        if task not in TASKS:
            raise ValueError(f'task: {task!r} is not one of {", ".join(TASKS)}')
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int)
                and 0 <= rank < world_size):
            raise ValueError(f'rank: must satisfy 0 <= rank < world_size, got rank={rank!r}, '
                             f'world_size={world_size!r}')
        target = inversion_target(teacher_model, task, self.invert)
        lo, hi = pixel_range(teacher_model)
        num_classes = self.num_classes or (num_classes_of(teacher_model) if task == 'classification' else None)
        self.cache = BatchCache(self.cache_dir, self._cache_key(teacher_model, target, task, num_classes, lo, hi))
        self.task, self.label_classes = task, num_classes  # the labels of batches added online
        self._shape = (self.batch_size, lo.shape[0], *self.image_size)
        self._batches = {}
        if hasattr(self.synthesizer, 'fill_cache'):  # a stateful stream (GeneratorSynthesizer)
            done = self.synthesizer.fill_cache(self, target, (lo, hi),
                                               lambda b: self._labels(b, task, num_classes),
                                               num_classes=num_classes, rank=rank, world_size=world_size, progress=progress)
        else:
            mine = range(rank, self.num_batches, world_size)
            todo = [b for b in mine if self.cache.load(b, self._shape) is None]
            print_log(f'synthetic_data: {len(mine) - len(todo)} of {len(mine)} batches cached in '
                      f'{self.cache.dir}; synthesising {len(todo)}', logger='current')
            for b in tqdm(todo, desc='synthetic batches', disable=not progress or len(todo) < 2):
                labels = self._labels(b, task, num_classes)
                images, stats = self.synthesizer.synthesize(target, self.batch_size, self.image_size, (lo, hi),
                                                            batch_seed(self.seed, b), labels=labels, progress=progress)
                self.cache.save(b, images, labels=labels, stats=stats)
            done = dict(generated=len(todo), reused=len(mine) - len(todo))
        self._log_passes()
        return done

    def _cache_key(self, teacher_model, target, task, num_classes, lo, hi) -> str:
        """Hash of the teacher's weights and everything that shapes the images."""
        config = self.synthesizer.config(target) if hasattr(self.synthesizer, 'config') else repr(self.synthesizer)
        return cache_key(hash_state_dict(teacher_model.state_dict()), synthesizer=config, seed=self.seed,
                         image_size=self.image_size, batch_size=self.batch_size, task=task,
                         chain_length=1,  # a retired setting at its one value: earlier caches still hit
                         num_classes=num_classes, pixel_range=[lo.flatten().tolist(), hi.flatten().tolist()],
                         # absent unless set, so caches made before the option still hit
                         **({} if self.invert == 'auto' else dict(invert=self.invert)))

    def _labels(self, b: int, task: str, num_classes: Optional[int]) -> Optional[torch.Tensor]:
        """CE labels of batch ``b``: balanced over the whole dataset (consecutive batches
        continue the cycle); None outside classification."""
        if task == 'classification' and num_classes:
            return (torch.arange(self.batch_size) + b * self.batch_size) % num_classes
        return None

    def _log_passes(self) -> None:
        """``self.stats``: teacher / student forward+backward passes per synthesised image over
        every cached batch (what the images cost, a stream's longer first batch included), logged."""
        records = [self.cache.load(b, self._shape) for b in range(self.num_batches)]
        stats = [r.get('stats') or {} for r in records if r is not None]
        self.batch_stats = stats  # per cached batch; the online pool adds its rounds' to them
        if not stats or any('teacher_passes' not in s for s in stats):
            self.stats = {}
            return
        self.stats = dict(batches=len(stats), images=len(stats) * self.batch_size,
                          teacher_passes_per_image=sum(s['teacher_passes'] for s in stats) / len(stats),
                          student_passes_per_image=sum(s.get('student_passes', 0) for s in stats) / len(stats),
                          seconds=sum(s.get('seconds', 0.0) for s in stats))
        print_log(f"synthetic_data: {type(self.synthesizer).__name__}: "
                  f"{self.stats['teacher_passes_per_image']:.1f} teacher and "
                  f"{self.stats['student_passes_per_image']:.1f} student passes per image over "
                  f"the {len(stats)} cached batches, {self.stats['seconds']:.0f} s when made",
                  logger='current')

    def _batch(self, b: int) -> torch.Tensor:
        if b not in self._batches:
            record = self.cache.load(b, self._shape)
            if record is None:
                raise RuntimeError(f'synthetic_data: batch {b} is missing from {self.cache.dir}; '
                                   'run prepare() on every rank and wait for all of them first')
            self._batches[b] = record['images']
        return self._batches[b]

    @property
    def pool_size(self) -> int:
        """Images that can be drawn: the offline ones and every batch added to the pool."""
        return self.num_images + self.batch_size * len(self.pool)

    def resample(self, epoch: int, newest: int = 0) -> None:
        """Which ``len(self)`` images of the pool this epoch trains on: the ``newest`` last
        added ones, the rest drawn uniformly without replacement from all the others, seeded
        by (seed, epoch) so a resumed run draws the same. The dataset length (and so the
        iterations per epoch) stays ``num_images``."""
        total = self.pool_size
        newest = min(newest, self.num_images)
        if total == self.num_images:
            self.index_map = None
            return
        gen = torch.Generator().manual_seed(batch_seed(self.seed, -(10**6) - epoch))
        older = torch.randperm(total - newest, generator=gen)[:self.num_images - newest]
        self.index_map = torch.cat([older, torch.arange(total - newest, total)])

    def __getitem__(self, index: int) -> dict:
        if self.cache is None:
            raise RuntimeError('synthetic_data: SyntheticImageDataset.prepare(teacher_model, task) '
                               'must run before images can be read')
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f'index {index} out of range for {self.num_images} synthetic images')
        index %= self.num_images
        if self.index_map is not None:
            index = int(self.index_map[index])
            if index >= self.num_images:
                extra = index - self.num_images
                return dict(inputs=self.pool[extra // self.batch_size][extra % self.batch_size])
        return dict(inputs=self._batch(index // self.batch_size)[index % self.batch_size])
