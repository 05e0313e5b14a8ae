"""On-disk cache of synthesised batches: one file per finished batch, written atomically.

Synthesis costs hundreds to thousands of teacher passes per batch, so every finished batch
is kept. The directory name is a hash of everything that changes the images, so a changed
teacher or setting never reads stale images, and a killed run resumes losing at most the
batch in progress (a batch file appears only via ``os.replace`` of a complete temp file).
"""
import hashlib
import json
import os
import os.path as osp
from typing import Callable, Optional, Tuple

import torch
from mmengine.logging import print_log


def hash_state_dict(state_dict: dict) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and tensor bytes (device-independent)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(name.encode())
        if torch.is_tensor(value):
            t = value.detach().cpu().contiguous()
            digest.update(f'{t.dtype}{tuple(t.shape)}'.encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def cache_key(teacher_hash: str, **settings) -> str:
    """Short hash of the teacher's weight hash and every JSON-able setting that shapes images."""
    blob = json.dumps(dict(teacher=teacher_hash, **settings), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class BatchCache:
    """Batches ``batch_00000.pt ...`` under ``root/key``; invalid files are reported and ignored."""

    def __init__(self, root: str, key: str):
        self.key = key
        self.dir = osp.join(root, key)

    def path(self, index: int) -> str:
        return osp.join(self.dir, f'batch_{index:05d}.pt')

    def load(self, index: int, shape: Tuple[int, ...]) -> Optional[dict]:
        """The stored record of batch ``index``, or None when absent, corrupt or mismatched
        (:func:`load_state`: named in one warning line and deleted, so it gets regenerated)."""
        def images_problem(record):
            images = record['images']
            if not torch.is_tensor(images) or images.dtype != torch.float32 or tuple(images.shape) != tuple(shape):
                return f'images are {getattr(images, "dtype", type(images))} {tuple(getattr(images, "shape", ()))}, expected float32 {tuple(shape)}'
            if not torch.isfinite(images).all():
                return 'images hold non-finite values'
            return None
        return load_state(self.path(index), 'synthetic_data: cache file', 'regenerating it', images_problem,
                          key=self.key, index=index)

    def save(self, index: int, images: torch.Tensor, **extra) -> None:
        """Write batch ``index`` atomically (:func:`atomic_save`)."""
        os.makedirs(self.dir, exist_ok=True)
        atomic_save(dict(key=self.key, index=index, images=images.detach().float().cpu().contiguous(),
                         **extra), self.path(index))


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temp file in the same directory, then rename: a killed run never
    leaves a half-written file under ``path``."""
    tmp = f'{path}.tmp{os.getpid()}'
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_state(path: str, what: str, then: str, check: Optional[Callable[[dict], Optional[str]]] = None,
               **expected) -> Optional[dict]:
    """The dict saved at ``path``, or None when there is none. The one behaviour of every state
    file of ours (cached batches, generator streams, the online pool's streams): a file that is
    unreadable, holds other ``expected`` values (e.g. another cache key) or fails ``check``
    (returns a problem, or None) is named in one warning line, ``<what> <path> is invalid
    (<problem>); <then>``, and deleted, so it is made again."""
    if not osp.isfile(path):
        return None
    try:
        record = torch.load(path, map_location='cpu', weights_only=True)
        wrong = {k: record.get(k) for k, v in expected.items() if record.get(k) != v}
        problem = (f'it belongs to {" ".join(f"{k} {v!r}" for k, v in wrong.items())}' if wrong
                   else check(record) if check is not None else None)
    except Exception as e:  # truncated or foreign file
        problem = f'unreadable: {type(e).__name__}'
    if problem is None:
        return record
    print_log(f'{what} {path} is invalid ({problem}); {then}', logger='current', level=30)
    try:
        os.remove(path)
    except OSError:
        pass
    return None
