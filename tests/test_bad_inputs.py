"""Bad inputs to the four tools and to the stock test tool's PrunedBackbone path: each ends in
one line naming the field (exit 2), and nothing the user had is changed.

The tools run as ``python tools/x.py ARGS`` would (``runpy`` with ``__name__ == '__main__'``,
so through their ``run_cli``), in this process: a new interpreter per case would spend ~5 s
importing the mm packages (tests/test_runner_errors.py runs tools/train.py as a real process).
The stock tool has its own error handling (a traceback, exit 1) and is run once as a process.
"""
import contextlib
import hashlib
import io
import json
import os
import os.path as osp
import runpy
import shutil
import subprocess
import sys
import warnings

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(REPO, 'tools')
STOCK_TEST = osp.join(osp.dirname(__import__('mmpretrain').__file__), '.mim', 'tools', 'test.py')

CLS_CFG = """_base_ = '{repo}/configs/benchmarks/digits_cls_teacher.py'
test_dataloader = dict(batch_size=10, dataset=dict(data_root='{data}', ann_file='', data_prefix=''))
"""
DFBF_CFG = """_base_ = '{repo}/configs/benchmarks/dfbf_digits_cls.py'
dfbf = dict(teacher_checkpoint='{user}/cls_teacher.pth',
            synthetic_data=dict(num_images=4, batch_size=2))
val_dataloader = dict(batch_size=10, dataset=dict(data_root='{data}', ann_file='', data_prefix=''))
test_dataloader = val_dataloader
"""


def _snapshot(root):
    """``{path: (mtime, size, sha1)}`` of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = osp.join(d, f)
            with open(p, 'rb') as fh:
                out[osp.relpath(p, root)] = (os.stat(p).st_mtime_ns, hashlib.sha1(fh.read()).hexdigest())
    return out


def run_tool(script, argv):
    """``python script *argv`` in this process: (exit status, stderr)."""
    old_argv, err = sys.argv, io.StringIO()
    sys.argv = [script] + [str(a) for a in argv]
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter('ignore')
            runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old_argv
    return code, err.getvalue()


@pytest.fixture(scope='module')
def ws(tmp_path_factory):
    """The user's files (configs, checkpoints, exports) and a scratch folder for tool outputs."""
    import cv2
    import numpy as np
    import torch
    root = tmp_path_factory.mktemp('bad_inputs')
    user, scratch = root / 'user', root / 'scratch'
    rng = np.random.default_rng(0)
    for k in range(10):  # one image per class: the test tool needs a dataset to build
        os.makedirs(user / 'data' / str(k))
        cv2.imwrite(str(user / 'data' / str(k) / 'a.png'), rng.integers(0, 255, (32, 32, 3)).astype(np.uint8))
    fmt = dict(repo=REPO, data=user / 'data', user=user)
    (user / 'cls.py').write_text(CLS_CFG.format(**fmt))
    (user / 'dfbf.py').write_text(DFBF_CFG.format(**fmt))
    (user / 'mmseg.py').write_text("default_scope = 'mmseg'\nmodel = dict(type='EncoderDecoder')\n")
    shutil.copy(osp.join(REPO, 'checkpoints/digits_cls_teacher.pth'), user / 'cls_teacher.pth')
    shutil.copy(osp.join(REPO, 'checkpoints/digits_det_teacher.pth'), user / 'det_teacher.pth')
    data = (user / 'cls_teacher.pth').read_bytes()
    (user / 'truncated.pth').write_bytes(data[:len(data) // 2])
    for sparsity, out in (('0.6', user / 'export'), ('0.3', scratch / 'export03')):
        code, err = run_tool(osp.join(TOOLS, 'prune.py'), [
            user / 'cls.py', user / 'cls_teacher.pth', '--sparsity', sparsity, '--out', out,
            '--input-size', '32', '32', '--latency-runs', '1', '--batch-sizes', '1'])
        assert code == 0, err
    # the spec of another export (s=0.3) beside the s=0.6 checkpoint
    shutil.copytree(user / 'export', user / 'swapped')
    shutil.copy(scratch / 'export03' / 'pruned_channel_spec.json', user / 'swapped')
    # a spec whose attrs disagree with its shapes
    shutil.copytree(user / 'export', user / 'inconsistent')
    spec = json.loads((user / 'inconsistent' / 'pruned_channel_spec.json').read_text())
    name = next(n for n, e in spec['modules'].items() if 'out_channels' in e['attrs'])
    spec['modules'][name]['attrs']['out_channels'] += 1
    (user / 'inconsistent' / 'pruned_channel_spec.json').write_text(json.dumps(spec))
    shutil.copytree(user / 'export', user / 'nospec')
    os.remove(user / 'nospec' / 'pruned_channel_spec.json')
    shutil.copytree(user / 'export', user / 'badjson')
    (user / 'badjson' / 'pruned_channel_spec.json').write_text('{"format": ')
    torch.set_num_threads(1)
    return dict(user=str(user), scratch=str(scratch), before=_snapshot(user), spec_module=name)


def _train(u, s, *extra):
    return [f'{u}/dfbf.py', '--work-dir', f'{s}/train', *extra]


def _prune(u, s, cfg='cls.py', ckpt='cls_teacher.pth', *extra):
    return [f'{u}/{cfg}', f'{u}/{ckpt}', '--out', f'{s}/pruned', '--input-size', '32', '32', *extra]


def _synth(u, s, ckpt='cls_teacher.pth', *extra, n='4'):
    return [f'{u}/dfbf.py', f'{u}/{ckpt}', '--num-images', n, '--out', f'{s}/synth', *extra]


def _test(u, s, cfg='cls.py', ckpt='cls_teacher.pth', *extra):
    return [f'{u}/{cfg}', f'{u}/{ckpt}', '--work-dir', f'{s}/test', *extra]


O = '--cfg-options'
# (tool, argv(user dir, scratch dir), regex the single stderr line must match after 'error: ')
CASES = [
    # tools/train.py
    ('train', lambda u, s: [f'{u}/nope.py'], r"^config: file not found: '.*nope.py'"),
    ('train', lambda u, s: _train(u, s, O, 'dfbff.pruner.sparsity=0.3'),
     r"^--cfg-options: 'dfbff.pruner.sparsity': the config has no key 'dfbff'; did you mean 'dfbf'\?"),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.pruner.sparsity'),
     r"^argument --cfg-options: 'dfbf.pruner.sparsity' is not KEY=VALUE"),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.learning_rate=0.1'), r"^dfbf: unknown key 'learning_rate'"),
    ('train', lambda u, s: _train(u, s, O, f'dfbf.teacher_checkpoint={u}/nope.pth'),
     r'^dfbf\.teacher_checkpoint: file not found'),
    ('train', lambda u, s: _train(u, s, O, f'dfbf.teacher_checkpoint={u}/det_teacher.pth'),
     r'^dfbf\.teacher_checkpoint: .*det_teacher.pth.* does not match the model'),
    ('train', lambda u, s: _train(u, s, O, f'dfbf.teacher_checkpoint={u}/truncated.pth'),
     r'^dfbf\.teacher_checkpoint: .*truncated.pth.* is not a readable checkpoint'),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.pruner.type=MagicPruner'),
     r"^dfbf\.pruner\.type: 'MagicPruner' is not a registered pruner"),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.synthesizer.preset=fastest'),
     r"preset: 'fastest' is not a synthesis preset"),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.synthetic_data.image_size=[-32,32]'),
     r'^dfbf\.synthetic_data\.image_size: '),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.synthetic_data.image_size=0'),
     r'^dfbf\.synthetic_data\.image_size: '),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.synthetic_data.invert=neck'),
     r"^dfbf\.synthetic_data\.invert: 'neck' is not one of"),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.synthetic_data.size=32'),
     r"^dfbf\.synthetic_data: unknown key 'size'"),
    ('train', lambda u, s: _train(u, s, O, 'val_dataloader.batch_sise=2'),
     r"^val_dataloader\.batch_sise: not a dataloader option; did you mean 'batch_size'\?"),
    ('train', lambda u, s: _train(u, s, '--launcher', 'slurmm'), r"^argument --launcher: invalid choice: 'slurmm'"),
    ('train', lambda u, s: _train(u, s, O, 'dfbf.train_data=imagenet'), r"^dfbf\.train_data: 'imagenet' is not one of"),
    # tools/prune.py
    ('prune', lambda u, s: _prune(u, s, cfg='nope.py'), r"^config: file not found: '.*nope.py'"),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'nope.pth'), r"^checkpoint: file not found: '.*nope.pth'"),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'det_teacher.pth'), r'^checkpoint: .*det_teacher.pth.* does not match'),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'truncated.pth'), r'^checkpoint: .* is not a readable checkpoint'),
    ('prune', lambda u, s: _prune(u, s, 'mmseg.py'), r"^default_scope: 'mmseg' is not supported"),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'cls_teacher.pth', '--sparsity', '1.5'), r'sparsity'),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'cls_teacher.pth', '--input-size', '0', '32'),
     r'^input_size: 0x32 is not positive'),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'cls_teacher.pth', '--trace-time-limit', 'soon'),
     r"^argument --trace-time-limit: 'soon' is not a number"),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'cls_teacher.pth', '--pruner-cfg', 'norm=3'), r'^pruner\.norm: 3 is not 1 or 2'),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'cls_teacher.pth', '--pruner-cfg', 'type=MagicPruner'),
     r"^dfbf\.pruner\.type: 'MagicPruner' is not a registered pruner"),
    ('prune', lambda u, s: _prune(u, s, 'cls.py', 'cls_teacher.pth', '--pruner-cfg', 'sparsityy=0.3'),
     r"^pruner\.sparsityy: not an argument of L1FilterPruner; arguments: sparsity, norm"),
    ('prune', lambda u, s: [f'{u}/cls.py', f'{u}/cls_teacher.pth'],
     r'^the following arguments are required: --out'),
    # tools/synthesize.py
    ('synthesize', lambda u, s: [f'{u}/nope.py', f'{u}/cls_teacher.pth', '--num-images', '4', '--out', f'{s}/synth'],
     r"^config: file not found: '.*nope.py'"),
    ('synthesize', lambda u, s: _synth(u, s, n='0'), r'^--num-images: must be a positive integer, got 0'),
    ('synthesize', lambda u, s: _synth(u, s, n='four'), r"^argument --num-images: invalid int value: 'four'"),
    ('synthesize', lambda u, s: _synth(u, s, 'nope.pth'), r"^checkpoint: file not found: '.*nope.pth'"),
    ('synthesize', lambda u, s: _synth(u, s, 'det_teacher.pth'), r'^checkpoint: .*det_teacher.pth.* does not match'),
    ('synthesize', lambda u, s: _synth(u, s, 'truncated.pth'), r'^checkpoint: .* is not a readable checkpoint'),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', O, 'dfbf.synthesizer.preset=fastest'),
     r"^dfbf\.synthesizer\.preset: 'fastest' is not a synthesis preset"),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', O, 'dfbf.synthesizer.iterationz=3'),
     r'^dfbf\.synthesizer\.iterationz: not a DeepInversion setting'),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', O, 'dfbf.synthesizer.type=GAN'),
     r"^dfbf\.synthesizer\.type: 'GAN' is not a registered synthesizer"),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', O, 'dfbf.synthetic_data.image_size=[-8,32]'),
     r'^dfbf\.synthetic_data\.image_size: must be \(H, W\) positive integers'),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', '--batch-size', '0'),
     r'^--batch-size: DeepInversion needs at least 2 images per batch, got 0'),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', O, 'dfbf.synthetic_data.batch_size=1'),
     r'^dfbf\.synthetic_data\.batch_size: must be an integer >= 2 \(per-batch BN statistics'),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', O, 'dfbf.synthetic_data.size=32'),
     r"^dfbf\.synthetic_data: unknown key 'size'"),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', O, 'dfbf.synthesizer'),
     r"^argument --cfg-options: 'dfbf.synthesizer' is not KEY=VALUE"),
    ('synthesize', lambda u, s: _synth(u, s, 'cls_teacher.pth', O, 'dfbff.seed=1'),
     r"^--cfg-options: 'dfbff.seed': the config has no key 'dfbff'; did you mean 'dfbf'\?"),
    # tools/test.py
    ('test', lambda u, s: _test(u, s, cfg='nope.py'), r"^config: file not found: '.*nope.py'"),
    ('test', lambda u, s: _test(u, s, 'cls.py', 'nope.pth'), r"^checkpoint: file not found: '.*nope.pth'"),
    ('test', lambda u, s: _test(u, s, 'cls.py', 'det_teacher.pth'),
     r"^checkpoint: '.*det_teacher.pth' does not match the model: \d+ missing and \d+ unexpected keys"),
    ('test', lambda u, s: _test(u, s, 'cls.py', 'truncated.pth'), r'^checkpoint: .*truncated.pth.* is not a readable checkpoint'),
    ('test', lambda u, s: _test(u, s, 'swapped/pruned.py', 'swapped/pruned.pth'),
     r"^model\.backbone\.channel_spec: '.*swapped/pruned_channel_spec.json' does not fit checkpoint .*: \d+ backbone tensors differ"),
    ('test', lambda u, s: _test(u, s, 'swapped/pruned.py', 'swapped/pruned.pth', '--non-strict'),
     r'^model\.backbone\.channel_spec: .* does not fit checkpoint'),  # shapes are never optional
    ('test', lambda u, s: _test(u, s, 'export/pruned.py', 'cls_teacher.pth'),
     r'^model\.backbone\.channel_spec: .* does not fit checkpoint .*cls_teacher.pth'),
    ('test', lambda u, s: _test(u, s, 'inconsistent/pruned.py', 'inconsistent/pruned.pth'),
     r'^channel_spec: .*: out_channels is \d+ but its tensors imply \d+'),
    ('test', lambda u, s: _test(u, s, 'nospec/pruned.py', 'nospec/pruned.pth'), r'^channel_spec: file not found'),
    ('test', lambda u, s: _test(u, s, 'badjson/pruned.py', 'badjson/pruned.pth'), r'^channel_spec: .* is not valid JSON'),
    ('test', lambda u, s: _test(u, s, 'cls.py', 'cls_teacher.pth', O, 'test_dataloader.batch_sise=2'),
     r"^test_dataloader\.batch_sise: not a dataloader option; did you mean 'batch_size'\?"),
    ('test', lambda u, s: _test(u, s, 'cls.py', 'cls_teacher.pth', O, 'test_dataloder.batch_size=2'),
     r"^--cfg-options: 'test_dataloder.batch_size': the config has no key 'test_dataloder'; "
     r"did you mean 'test_dataloader'\?"),
    ('test', lambda u, s: _test(u, s, 'cls.py', 'cls_teacher.pth', O, 'test_dataloader.batch_size'),
     r"^argument --cfg-options: 'test_dataloader.batch_size' is not KEY=VALUE"),
    ('test', lambda u, s: [f'{u}/cls.py'], r'^the following arguments are required: checkpoint'),
]


@pytest.mark.parametrize('tool, argv, message', CASES, ids=[f'{c[0]}-{i}' for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_changes_nothing(ws, tool, argv, message):
    import re
    args = argv(ws['user'], ws['scratch'])
    code, err = run_tool(osp.join(TOOLS, f'{tool}.py'), args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith('error: '), err
    assert re.search(message, lines[0][len('error: '):]), lines[0]
    assert _snapshot(ws['user']) == ws['before']
    if tool == 'synthesize':
        assert not osp.exists(osp.join(ws['scratch'], 'synth'))  # no output for refused input


STOCK_CASES = [  # the stock mmpretrain tools/test.py on a deploy config: PrunedBackbone + the hook
    ('swapped/pruned.py', 'swapped/pruned.pth',
     r"^model\.backbone\.channel_spec: '.*swapped/pruned_channel_spec.json' does not fit load_from"),
    ('export/pruned.py', 'truncated.pth', r'^load_from: .*truncated.pth.* is not a readable checkpoint'),
    ('inconsistent/pruned.py', 'inconsistent/pruned.pth', r'^channel_spec: .*: out_channels is \d+ but'),
]


@pytest.mark.slow
@pytest.mark.parametrize('cfg, ckpt, message', STOCK_CASES)
def test_stock_test_tool_refuses_what_does_not_fit(ws, cfg, ckpt, message):
    u = ws['user']
    with pytest.raises(ValueError, match=message):
        run_tool(STOCK_TEST, [f'{u}/{cfg}', f'{u}/{ckpt}', '--work-dir', f'{ws["scratch"]}/stock'])
    assert _snapshot(u) == ws['before']


@pytest.mark.slow
def test_good_inputs_still_pass(ws):
    """The checks refuse only what is wrong: the matching export tests; --non-strict still needs
    the checkpoint to load something."""
    u, s = ws['user'], ws['scratch']
    code, err = run_tool(osp.join(TOOLS, 'test.py'), _test(u, s, 'export/pruned.py', 'export/pruned.pth'))
    assert code == 0, err
    code, err = run_tool(osp.join(TOOLS, 'test.py'), _test(u, s, 'cls.py', 'det_teacher.pth', '--non-strict'))
    assert code == 2 and 'shares no tensor name with the model' in err


@pytest.mark.slow
def test_stock_tool_process_fails(ws):
    """End to end in a new interpreter: the stock tool stops (traceback, exit 1: its own error
    handling) with the one-line reason last."""
    u, s = ws['user'], ws['scratch']
    out = subprocess.run([sys.executable, STOCK_TEST, f'{u}/swapped/pruned.py', f'{u}/swapped/pruned.pth',
                          '--work-dir', f'{s}/stock'], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith('ValueError: model.backbone.channel_spec: ')
    assert 'accuracy' not in out.stdout
    assert _snapshot(u) == ws['before']


def test_cfg_options_new_nested_key_warns_only_on_a_near_miss(capsys):
    from mmengine.config import Config

    from dfbf_mm.cli import merge_cfg_options
    cfg = Config(dict(model=dict(backbone=dict(type='ResNet', depth=18, num_stages=4))))
    merge_cfg_options(cfg, {'model.backbone.dpth': 50, 'model.backbone.frozen_stages': 1})
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --cfg-options: 'model.backbone.dpth' adds 'dpth' to model.backbone; "
                   "did you mean 'depth'?"]
    assert cfg.model.backbone.dpth == 50 and cfg.model.backbone.frozen_stages == 1  # still merged
