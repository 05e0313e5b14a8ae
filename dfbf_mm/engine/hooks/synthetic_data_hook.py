"""SyntheticDataHook: make the synthetic images before training starts.

Each rank inverts the teacher for its own share of the batches into one shared cache; after a
barrier every rank reads all of them. Rank 0 writes an image grid to the work dir and the
visualizer so a person can look at what the student is trained on.
"""
import os.path as osp

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
        dataset.prepare(model.teacher, self.task, rank=rank, world_size=world_size)
        barrier()
        if world_size > 1:  # the other ranks' batches are in the cache now
            dataset.prepare(model.teacher, self.task, rank=rank, world_size=1)
        if is_main_process():
            from ...synthesis import save_grid
            path = osp.join(runner.work_dir, 'synthetic_images.png')
            grid = save_grid(dataset, model.teacher, path, max_images=self.grid_images)
            runner.visualizer.add_image('synthetic_images', grid)
            runner.logger.info(f'synthetic images: {len(dataset)} ready; grid: {path}')
