"""Problems of a shipped or user config that show when it is read, not minutes later."""
import pytest
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.engine import to_runner_config
from dfbf_mm.stock_model import build_stock_model

HRNET = 'configs/dfbf_hrnet_w32_coco_keypoint.py'


@pytest.mark.parametrize('path', ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                                  'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py'])
@pytest.mark.slow
def test_two_stage_detectors_build(path):
    # their heads read train_cfg.rpn / test_cfg.rcnn as attributes (ConfigDict, not dict)
    from mmengine.hub import get_config
    model = build_stock_model(get_config(path))
    assert type(model).__name__ in ('FasterRCNN', 'CascadeRCNN')
    assert model.train_cfg.rpn.sampler.num == 256


@pytest.mark.slow
def test_hrnet_half_resolution_phase_checked_when_the_config_is_read():
    cfg = Config.fromfile(HRNET)
    cfg.dfbf.synthesizer = dict(type='DeepInversionSynthesizer', preset='pose')  # the paper's synthesis
    cfg.dfbf.synthetic_data.image_size = (160, 128)  # the reference pose size: 80x64 at half res
    with pytest.raises(ValueError) as e:
        to_runner_config(cfg)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('dfbf.synthetic_data.image_size: (160, 128)')
    assert 'half-resolution (half_res_iterations) phase the network sees 80x64' in msg
    assert 'sizes that work in every phase: (192, 128)' in msg
    # the suggested size is accepted
    cfg.dfbf.synthetic_data.image_size = (192, 128)
    assert to_runner_config(cfg).model['input_size'] == (192, 128)


def test_a_single_phase_preset_takes_the_same_size():
    cfg = Config.fromfile(HRNET)
    cfg.dfbf.synthetic_data.image_size = (160, 128)
    cfg.dfbf.synthesizer = dict(type='DeepInversionSynthesizer', preset='pose', half_res_iterations=0)
    assert to_runner_config(cfg).model['input_size'] == (160, 128)
