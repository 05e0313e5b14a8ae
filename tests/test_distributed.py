"""Scale-out with MMEngine's own launch: the stock mmpretrain tools/train.py under torchrun,
2 CPU processes (gloo). Each rank synthesises its own share into one cache; rank 0 exports."""
import glob
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.stock_model import build_stock_model

from test_walking_skeleton import DFBF_BLOCK, STOCK_CFG
from tiny_data import imagenet_style_folder


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, options, block=DFBF_BLOCK):
    """The stock mmpretrain tools/train.py on 2 gloo processes; (log, work dir)."""
    data = imagenet_style_folder(str(tmp_path / 'val'), per_class=2)
    stock_cfg = STOCK_CFG.format(data=data)
    stock_file = tmp_path / 'stock.py'
    stock_file.write_text(stock_cfg)
    torch.save({'state_dict': build_stock_model(Config.fromfile(str(stock_file))).state_dict()},
               tmp_path / 'teacher.pth')
    cfg_file = tmp_path / 'dfbf_ddp.py'
    cfg_file.write_text(stock_cfg + block.format(teacher=tmp_path / 'teacher.pth'))
    stock_train = osp.join(osp.dirname(__import__('mmpretrain').__file__), '.mim', 'tools',
                           'train.py')
    work = tmp_path / 'work'
    out = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), stock_train,
         str(cfg_file), '--launcher', 'pytorch', '--work-dir', str(work), '--no-persistent-workers',
         '--cfg-options', *options],
        capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    return log, work


@pytest.mark.slow
def test_two_process_gloo_run_with_stock_train_tool(tmp_path):
    log, work = _torchrun(tmp_path, ['dfbf.synthesizer.iterations=5', 'dfbf.schedule.epochs=1',
                                     'dfbf.synthetic_data.num_images=8', 'dfbf.synthetic_data.batch_size=2'])
    # 4 batches of 2, sharded: each rank generated exactly its 2, none twice
    assert '[rank 0/2] synthetic data: generated 2 batches, reused 0' in log
    assert '[rank 1/2] synthetic data: generated 2 batches, reused 0' in log
    assert len(glob.glob(str(work / 'synthetic_cache' / '*' / 'batch_*.pt'))) == 4
    # rank 0 alone exported, and the export loads with the plain tools
    assert log.count('exported the pruned model') == 1
    assert osp.isfile(work / 'export' / 'pruned.pth')


@pytest.mark.slow
def test_two_process_online_synthesis_shares_each_round(tmp_path):
    generator = DFBF_BLOCK.replace("type='DeepInversionSynthesizer', preset='classification', iterations=30,\n"
                                   "                     warmup_iters=2",
                                   "type='GeneratorSynthesizer', preset='classification', steps=2, first_steps=2")
    assert 'GeneratorSynthesizer' in generator
    log, work = _torchrun(tmp_path, [
        'dfbf.online.interval=1', 'dfbf.online.batches=2', 'dfbf.online.begin=1', 'dfbf.schedule.epochs=2',
        'dfbf.schedule.lr_steps=[2]', 'dfbf.synthetic_data.num_images=4', 'dfbf.synthetic_data.batch_size=2'],
        generator)
    # offline, the generator's 2 batches form one stream per rank: both ranks synthesise
    assert '[rank 0/2] synthetic data: generated 1 batches, reused 0' in log
    assert '[rank 1/2] synthetic data: generated 1 batches, reused 0' in log
    assert len(glob.glob(str(work / 'synthetic_cache' / '*' / 'generator_stream_*.pt'))) == 2
    # the round of 2 batches at epoch 1: one per rank, both read by both
    assert '[rank 0/2] online synthesis round 0: generated 1 batches, reused 0' in log
    assert '[rank 1/2] online synthesis round 0: generated 1 batches, reused 0' in log
    assert len(glob.glob(str(work / 'online_pool' / '*' / 'batch_*.pt'))) == 2
    assert len(glob.glob(str(work / 'online_pool' / '*' / 'stream_rank*.pt'))) == 2
    assert 'round 0 (epoch 1): +2 batches, pool 8 images' in log
    assert log.count('exported the pruned model') == 1


def test_process_group_is_destroyed_at_exit(tmp_path):
    """The exit handler the runner registers tears an initialised group down (gloo threads left
    to interpreter finalisation aborted a finished rank with SIGABRT) and is a no-op without one."""
    import torch.distributed as dist
    from dfbf_mm.engine.runner import _destroy_process_group
    _destroy_process_group()  # none: nothing happens
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    assert dist.is_initialized()
    _destroy_process_group()
    assert not dist.is_initialized()
