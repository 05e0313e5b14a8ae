"""SyntheticDataHook: make the synthetic images before training starts.

Each rank inverts the teacher for its own share of the batches into one shared cache; after a
barrier every rank reads all of them. Rank 0 writes an image grid to the work dir and the
visualizer so a person can look at what the student is trained on.
"""
import os.path as osp

import torch

from mmengine.dist import barrier, get_dist_info, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...registry import HOOKS


@HOOKS.register_module()
class SyntheticDataHook(Hook):
    """Fills the ``SyntheticImageDataset`` of the train dataloader from the teacher."""

    priority = 'VERY_HIGH'

    def __init__(self, task: str, grid_images: int = 64):
        self.task = task
        self.grid_images = grid_images

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        dataset = runner.train_dataloader.dataset
        rank, world_size = get_dist_info()
        done = dataset.prepare(model.teacher, self.task, rank=rank, world_size=world_size)
        if world_size > 1:  # every rank says what it did (the logger is quiet on ranks > 0)
            print(f'[rank {rank}/{world_size}] synthetic data: generated {done["generated"]} '
                  f'batches, reused {done["reused"]}', flush=True)
        barrier()
        if world_size > 1:  # the other ranks' batches are in the cache now
            dataset.prepare(model.teacher, self.task, rank=0, world_size=1, progress=False)
        if is_main_process():
            self._show(runner, dataset, model.teacher)

    def _show(self, runner, dataset, teacher) -> None:
        from ...stock_model import normalization
        from ...synthesis import grid_image, to_uint8, write_image
        mean, std, rgb = normalization(teacher)
        count = min(len(dataset), self.grid_images)
        pixels = to_uint8(torch.stack([dataset[i]['inputs'] for i in range(count)]), mean, std)
        grid = grid_image(pixels, self.grid_images)
        path = write_image(grid, osp.join(runner.work_dir, 'synthetic_images.png'), rgb)
        grid = grid if rgb else grid.flip(0)  # the visualizer takes RGB
        runner.visualizer.add_image('synthetic_images', grid.permute(1, 2, 0).numpy())
        stats = getattr(dataset, 'stats', None) or {}
        cost = (f"; {stats['teacher_passes_per_image']:.1f} teacher passes per image"
                if 'teacher_passes_per_image' in stats else '')
        runner.logger.info(f'synthetic images: {len(dataset)} ready{cost}; grid: {path}')
