"""OnlineSynthesisHook: new synthetic batches during fine-tuning, against the current student.

The glue of ``dfbf.online`` (``synthesis/online_pool.py`` has the rounds, the pool and the
resume logic; ``synthesis/adversary.py`` the adversarial term). Before each round's epoch every
rank makes its share of the round's batches, a barrier, every rank reads them, and each epoch
trains on its draw from the whole pool. The pool's key travels in the checkpoints' meta, so
``--resume`` reopens the same pool.
"""
import os.path as osp

from mmengine.dist import barrier, get_dist_info, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...registry import HOOKS

META_KEY = 'dfbf_online_pool'


@HOOKS.register_module()
class OnlineSynthesisHook(Hook):
    """Grows the ``SyntheticImageDataset`` of the train dataloader (``dfbf.online``).

    Args:
        task: 'classification', 'detection' or 'pose'.
        interval, batches, begin, adv_weight, grid_images: the ``dfbf.online`` options.
    """

    priority = 'NORMAL'  # after SyntheticDataHook (the offline pool)

    def __init__(self, task: str, interval: int = 2, batches: int = 1, begin: int = 2,
                 adv_weight: float = 1.0, grid_images: int = 64):
        self.task = task
        self.settings = dict(interval=interval, batches=batches, begin=begin, adv_weight=adv_weight)
        self.grid_images = grid_images
        self.key = None  # from a resumed checkpoint, else made in before_train
        self.pool = None

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        self.key = (checkpoint.get('meta') or {}).get(META_KEY)

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        checkpoint.setdefault('meta', {})[META_KEY] = self.key

    def before_train(self, runner) -> None:
        from ...synthesis.cache import hash_state_dict
        from ...synthesis.online_pool import OnlinePool
        model = self._model(runner)
        dataset = runner.train_dataloader.dataset
        s = self.settings
        self.pool = OnlinePool(dataset, s['interval'], s['batches'], s['begin'], runner.max_epochs)
        resumed = self.key is not None
        if not resumed:
            self.key = OnlinePool.key(dataset.cache.key, s, hash_state_dict(model.student.state_dict()))
        rank, world_size = get_dist_info()
        device = next(model.teacher.parameters()).device
        self.pool.open(osp.join(runner.work_dir, 'online_pool'), self.key, runner.epoch, resumed,
                       device, rank, world_size)
        runner.logger.info(f'online synthesis: pool {self.pool.cache.dir}, {len(dataset.pool)} batches '
                           f'of earlier rounds; a round of {s["batches"]} batches every '
                           f'{s["interval"]} epochs from epoch {s["begin"]}')

    def _adversary(self, model):
        from ...synthesis.adversary import FeatureAdversary
        if not self.settings['adv_weight']:
            return None

        def distance(s_taps, t_taps, s_outs, t_outs):
            return sum(model.loss(s_taps, t_taps, s_outs, t_outs).values())
        return FeatureAdversary(model.teacher.backbone, model.student.backbone, model.taps, distance,
                                self.settings['adv_weight'])

    def before_train_epoch(self, runner) -> None:
        from ...stock_model import pixel_range
        from ...synthesis.inversion_target import inversion_target
        dataset = runner.train_dataloader.dataset
        rnd = self.pool.round_at(runner.epoch)
        newest = 0
        if rnd is not None:
            model = self._model(runner)
            target = inversion_target(model.teacher, self.task, dataset.invert)
            adversary = self._adversary(model)
            if adversary is None:
                done = self.pool.make_round(rnd, target, pixel_range(model.teacher))
            else:
                with adversary:
                    done = self.pool.make_round(rnd, target, pixel_range(model.teacher), adversary)
            rank, world_size = get_dist_info()
            if world_size > 1:
                print(f'[rank {rank}/{world_size}] online synthesis round {rnd}: generated '
                      f'{done["generated"]} batches, reused {done["reused"]}', flush=True)
            barrier()
            added = self.pool.load_round(rnd)
            newest = len(added) * dataset.batch_size
            stats = self.pool.stats()
            runner.logger.info(
                f"online synthesis: round {rnd} (epoch {runner.epoch}): +{len(added)} batches, pool "
                f"{stats['images']} images; {stats['teacher_passes_per_image']:.1f} teacher and "
                f"{stats['student_passes_per_image']:.1f} student passes per image over the run, "
                f"{stats['online_seconds']:.0f} s online so far")
            if is_main_process() and self.grid_images:
                self._show(runner, dataset, model.teacher, added)
        dataset.resample(runner.epoch, newest)

    def _show(self, runner, dataset, teacher, added) -> None:
        import torch
        from ...stock_model import normalization
        from ...synthesis import grid_image, to_uint8, write_image
        mean, std, rgb = normalization(teacher)
        pixels = to_uint8(torch.cat(added)[:self.grid_images], mean, std)
        grid = grid_image(pixels, self.grid_images)
        write_image(grid, osp.join(runner.work_dir, 'online_images.png'), rgb)
