"""The dfbf schema is the one home of the block: the options table of the docs, defaults and the round trip."""
import glob
import inspect
import os.path as osp

import pytest
from mmengine.config import Config

import dfbf_mm  # noqa: F401
from dfbf_mm.engine import ExportHook, stock_config, to_runner_config
from dfbf_mm.schema import (DISTILL, EXPORT, SYNTHETIC_DATA, loss_config, options_table,
                            read_dfbf)
from dfbf_mm.synthesis import SyntheticImageDataset

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_docs_options_table_is_the_schema():
    from tools.options_table import DOC, doc_table
    with open(osp.join(REPO, DOC)) as f:
        assert doc_table(f.read()) == options_table(), \
            f'{DOC}: options table is stale: run python tools/options_table.py --doc {DOC}'


@pytest.mark.parametrize('block, cls', [(SYNTHETIC_DATA, SyntheticImageDataset), (EXPORT, ExportHook)])
def test_schema_defaults_are_the_defaults_of_what_they_configure(block, cls):
    params = inspect.signature(cls.__init__).parameters
    shared = [k for k in block.keys if k in params and params[k].default is not inspect.Parameter.empty]
    assert shared
    for key in shared:
        assert block.defaults()[key] == params[key].default, key


def test_loss_shorthands_fill_the_default_loss():
    distill = DISTILL.read(dict(distance='mse', weights=(1, 2)))
    assert loss_config(distill) == dict(type='FeatureMimicLoss', distance='mse', weights=(1, 2))
    assert read_dfbf(dict(teacher_checkpoint='t.pth', pruner=dict(type='L1FilterPruner', sparsity=0.5),
                          synthesizer=dict(type='DeepInversionSynthesizer', preset='fast'),
                          synthetic_data=dict(image_size=64)))['synthetic_data']['image_size'] == (64, 64)


@pytest.mark.slow
@pytest.mark.parametrize('path', sorted(glob.glob(osp.join(REPO, 'configs', 'dfbf_*.py'))), ids=osp.basename)
def test_stock_config_undoes_the_rewrite(path):
    cfg = Config.fromfile(path)
    back = stock_config(to_runner_config(cfg))
    expected = {k: v for k, v in cfg.to_dict().items()
                if k not in ('dfbf', 'runner_type', 'data_preprocessor')}
    got = back.to_dict()
    assert set(got) == set(expected)
    for key in expected:
        if key != 'model':
            assert got[key] == expected[key], key
    assert {k: v for k, v in got['model'].items() if k != 'data_preprocessor'} == \
        {k: v for k, v in expected['model'].items() if k != 'data_preprocessor'}
