"""Transformer models from STOCK configs of the installed packages plus the three dfbf lines, as
a user writes them, end to end at their real architecture: a ViT-B classifier, a Swin-T
detector and a ViTPose (ViT-S) pose model.

As in ``test_shipped_configs``: a random-weights teacher of the config's exact model stands in
for the user's checkpoint, only the budget is shrunk (2 synthetic images, one step per
synthesis phase, one epoch, no latency profile), then ``tools/train.py`` through
``DataFreeDistillRunner`` with the val loop on, the export rebuilt by the stock registry and
loaded strictly, and the package's own stock ``tools/test.py`` on the export. None of these
backbones has a BatchNorm layer, so synthesis takes the patch-similarity prior. The synthetic
images are smaller than the models' stock input (ViT interpolates its position embeddings, Swin
pads to its windows); val and test run the stock pipelines, the detector's at a smaller scale.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.stock_model import build_stock_model, config_scope, get_backbone
from test_shipped_configs import METRIC, REPO, check_export_with_stock_tools, run, tiny_budget
from tiny_val_sets import all_val_sets

# what a user adds to the stock config they trained with (README, Quick start)
USER_CONFIG = """_base_ = '{base}'
custom_imports = dict(imports=['dfbf_mm'], allow_failed_imports=False)
runner_type = 'DataFreeDistillRunner'
dfbf = dict(
    teacher_checkpoint='path/to/your_checkpoint.pth',
    pruner=dict(type='L1FilterPruner', sparsity=0.1, norm=1, layer_dependent=True),
    synthesizer=dict(type='DeepInversionSynthesizer', preset='{preset}'),
    synthetic_data=dict(num_images=1600, batch_size=16, image_size={image_size}, seed=0),
    distill=dict(distance='l1', weights=2, bn='update'{neck}),
    schedule=dict(epochs=5, lr=0.01, lr_steps=[3]),
)
"""

# mmdet's stock test pipeline resizes the 128x96 val images to 1067x800, where the stock test
# tool took 21 s per image of this random Swin-T RetinaNet on 2 busy CPU cores: their own size
SMALL_DET_TEST = [f'{loader}.dataset.pipeline.1.scale=(128,128)'
                  for loader in ('val_dataloader', 'test_dataloader')]
CASES = {
    # case: (stock config, synthesis preset, synthetic image size of the test, more --cfg-options)
    'vit-b16-classifier': ('mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py',
                           'classification', (64, 64), []),
    'swin-t-retinanet': ('mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py', 'detection', (64, 64),
                         SMALL_DET_TEST),
    'vitpose-s': ('mmpose::body_2d_keypoint/topdown_heatmap/coco/'
                  'td-hm_ViTPose-small_8xb64-210e_coco-256x192.py', 'pose', (128, 96), []),
}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return all_val_sets(str(tmp_path_factory.mktemp('val_sets')))


def user_config(tmp_path, case: str) -> str:
    base, preset, size, _ = CASES[case]
    path = str(tmp_path / f'{case}_dfbf.py')
    with open(path, 'w') as f:
        # the README's detection block matches the stock neck's outputs too
        neck = ', neck_weight=1.0' if preset == 'detection' else ''
        f.write(USER_CONFIG.format(base=base, preset=preset, image_size=size, neck=neck))
    return path


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_transformer_stock_config_end_to_end(case, data_root, tmp_path):
    config = user_config(tmp_path, case)
    cfg = Config.fromfile(config)
    scope = config_scope(cfg)
    teacher = build_stock_model(cfg)
    # (ViTPose's heatmap head has BN layers; its backbone, the inverted part, has none)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in get_backbone(teacher).modules())
    teacher_ckpt = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': teacher.state_dict()}, teacher_ckpt)

    work = tmp_path / 'work'
    options = [*tiny_budget(cfg, teacher_ckpt), *CASES[case][3]]
    out = run([osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', str(work), '--cfg-options', *options],
              data_root, tmp_path / 'train.log')
    assert 'Epoch(val)' in out and METRIC[scope] in out  # the stock evaluator ran after the epoch
    assert 'patch=' in out  # the synthesis progress bar: the patch-similarity prior, not BN statistics
    check_export_with_stock_tools(work, teacher, scope, data_root, tmp_path)
