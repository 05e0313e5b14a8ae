"""OnlinePool: the synthetic image pool grows during fine-tuning (online synthesis).

Offline, the cache is filled once before training. Online (``dfbf.online``), every
``interval`` epochs from epoch ``begin`` a *round* adds ``batches`` new batches against the
*current* student, made by the offline ``GeneratorSynthesizer``: the same meta generator (it
continues the offline stream's state, the one warm start across batches there is), and the
feature-distance adversarial term (``adversary.py``) pushes the new images to where the student
still mimics the teacher worst. Every epoch then trains on ``num_images`` images of
the whole pool, the newest round's all included (``SyntheticImageDataset.resample``): the
same iterations per epoch as offline, so budgets compare.

Where things live, and why it resumes:
* a round's batches: ``<root>/<key>/batch_NNNNN.pt`` (``BatchCache``), key = hash of the
  offline cache key, the online settings and the student at the start of the run. The
  student changes every epoch, so this pool belongs to one run: the hook stores the key in
  every checkpoint and ``--resume`` reopens the same pool.
* each rank's stream: ``stream_rank<r>.pt``, written after every batch (``_Stream.save``, as
  the offline streams) with the round and how many of the rank's batches of it are made. A
  resumed run continues the stream (a killed round loses at most the batch in progress); a
  stream ahead of the checkpoint (resumed from an older one) restarts from the offline state,
  with a warning.
* DDP: rank r makes the round's batches j with ``j % world_size == r``; after a barrier
  (the hook's) every rank reads all of them.
"""
import os
import os.path as osp
from typing import Dict, List, Optional

import torch
from mmengine.logging import print_log
from tqdm import tqdm

from .cache import BatchCache, cache_key
from .dataset import SyntheticImageDataset, batch_seed
from .generator import GeneratorSynthesizer, _Stream

# batch seeds of online batches: far from the offline (b >= 0) and stream (< 0) ones
_ONLINE_SEED_BASE = -(10**9)


class OnlinePool:
    """The rounds of online synthesis of one run (see the module docstring).

    Args:
        dataset: the prepared ``SyntheticImageDataset`` (its synthesizer a GeneratorSynthesizer).
        interval: epochs between rounds. batches: batches per round (all ranks together).
        begin: the epoch (0-based) of the first round. epochs: the run's epochs.
    """

    def __init__(self, dataset: SyntheticImageDataset, interval: int, batches: int, begin: int,
                 epochs: int):
        if not isinstance(dataset.synthesizer, GeneratorSynthesizer):
            raise ValueError(f"dfbf.synthesizer: dfbf.online needs type 'GeneratorSynthesizer' (its "
                             f'stream makes the online batches), got {type(dataset.synthesizer).__name__}')
        if dataset.cache is None:
            raise RuntimeError('dfbf.online: the synthetic dataset must be prepared first')
        self.dataset, self.interval, self.batches = dataset, interval, batches
        self.begin, self.epochs = begin, epochs
        self.cache: Optional[BatchCache] = None
        self.stream: Optional[_Stream] = None
        self.state: dict = {}  # round / made of this rank's stream

    # ------------------------------------------------------------------ the schedule
    def round_at(self, epoch: int) -> Optional[int]:
        """The round made at the start of ``epoch``, or None."""
        if epoch < self.begin or (epoch - self.begin) % self.interval:
            return None
        return (epoch - self.begin) // self.interval

    def rounds_before(self, epoch: int) -> int:
        """Rounds made before ``epoch`` begins."""
        return 0 if epoch <= self.begin else (epoch - self.begin - 1) // self.interval + 1

    def index(self, rnd: int, j: int) -> int:
        """Cache index of batch ``j`` of round ``rnd``."""
        return rnd * self.batches + j

    @staticmethod
    def key(offline_key: str, settings: dict, student_hash: str) -> str:
        return cache_key(student_hash, offline=offline_key, online=settings)

    # ------------------------------------------------------------------ opening / resuming
    def _state_path(self, rank: int) -> str:
        return osp.join(self.cache.dir, f'stream_rank{rank}.pt')

    def open(self, root: str, key: str, epoch: int, resumed: bool, device, rank: int = 0,
             world_size: int = 1) -> None:
        """Open the pool at the start of ``epoch``: this rank's stream, and the batches of
        every round made before it (read into ``dataset.pool``)."""
        self.cache = BatchCache(root, key)
        os.makedirs(self.cache.dir, exist_ok=True)
        self.rank, self.world_size = rank, world_size
        d = self.dataset
        rounds = self.rounds_before(self.epochs)
        mine = len(range(rank, self.batches, world_size))
        self.stream = _Stream(d.synthesizer, batch_seed(d.seed, _ONLINE_SEED_BASE - rank), d._shape[2:],
                              d._shape[1], device, (d.label_classes or 0) if d.task == 'classification' else 0,
                              max(1, rounds * mine))
        done = self.rounds_before(epoch)
        state = _Stream.saved(self._state_path(rank), self.cache.key, 'dfbf.online: stream state') if resumed else None
        if state is not None and (state['round'] == done or (state['round'] == done - 1 and state['made'] >= mine)):
            self.stream.load_state_dict(state)
            self.state = dict(round=state['round'], made=state['made'])
        else:
            if resumed and done:
                print_log(f'dfbf.online: no generator stream state of round {done - 1} in {self.cache.dir} '
                          '(resumed from an older checkpoint, or it was removed); the stream restarts '
                          'from the offline generator', logger='current', level=30)
            offline = d.synthesizer.offline_state(d.cache, 0)
            if offline is not None:  # continue the meta generator learnt offline
                self.stream.load_state_dict(offline)
            self.state = dict(round=-1, made=0)
        d.pool = []
        self.batch_stats = list(d.batch_stats)  # the offline batches' (read by prepare)
        lost = sum(self.batches - len(self.load_round(rnd, required=False)) for rnd in range(done))
        if lost:  # made before the checkpoint and since removed: the pool goes on without them
            print_log(f'dfbf.online: {lost} batches of rounds before epoch {epoch} are missing from '
                      f'{self.cache.dir}; continuing with the {len(d.pool)} found', logger='current', level=30)

    # ------------------------------------------------------------------ a round
    def make_round(self, rnd: int, target, pixel_range, adversary=None, progress: bool = True) -> Dict[str, int]:
        """Synthesise this rank's batches of round ``rnd`` (those a killed run already made
        with the same stream are kept); the caller synchronises ranks, then :meth:`load_round`."""
        d, synth = self.dataset, self.dataset.synthesizer
        mine = list(range(self.rank, self.batches, self.world_size))
        kept = self.state['made'] if self.state['round'] == rnd else 0
        todo = [j for i, j in enumerate(mine)
                if i >= kept or self.cache.load(self.index(rnd, j), d._shape) is None]
        s = synth.settings
        total = sum(self.stream.steps() if i == 0 else s['steps'] for i in range(len(todo))) \
            + s['refine_steps'] * len(todo)
        bar = tqdm(total=total, desc=f'online synthesis, round {rnd}', disable=not progress or not todo,
                   dynamic_ncols=True, leave=False)
        try:
            for j in todo:
                g = self.index(rnd, j)
                labels = d._labels(d.num_batches + g, d.task, d.label_classes)
                seed = batch_seed(d.seed, _ONLINE_SEED_BASE - 1 - g)
                images, stats = self.stream.batch(target, d.batch_size, pixel_range, seed, labels, bar,
                                                  adversary=adversary)
                self.cache.save(g, images, labels=labels, stats=stats)
                self.state = dict(round=rnd, made=mine.index(j) + 1)
                self.stream.save(self._state_path(self.rank), self.cache.key, **self.state)
        finally:
            bar.close()
        self.state = dict(round=rnd, made=len(mine))
        return dict(generated=len(todo), reused=len(mine) - len(todo))

    def load_round(self, rnd: int, required: bool = True) -> List[torch.Tensor]:
        """Append round ``rnd``'s batches (every rank's) to ``dataset.pool``; a missing one
        is an error, or (``required=False``) left out."""
        d = self.dataset
        added = []
        for j in range(self.batches):
            record = self.cache.load(self.index(rnd, j), d._shape)
            if record is None and not required:
                continue
            if record is None:
                raise RuntimeError(f'dfbf.online: batch {j} of round {rnd} is missing from '
                                   f'{self.cache.dir}; every rank must make its share first')
            added.append(record['images'])
            self.batch_stats.append(record.get('stats') or {})
        d.pool.extend(added)
        return added

    def stats(self) -> Dict[str, float]:
        """Teacher / student passes per image over the offline batches and every round so far."""
        d = self.dataset
        stats, n = self.batch_stats, len(self.batch_stats)
        return dict(images=d.pool_size, online_images=len(d.pool) * d.batch_size,
                    teacher_passes_per_image=sum(s.get('teacher_passes', 0) for s in stats) / n,
                    student_passes_per_image=sum(s.get('student_passes', 0) for s in stats) / n,
                    online_seconds=sum(s.get('seconds', 0.0) for s in stats[d.num_batches:]))


__all__ = ['OnlinePool']
