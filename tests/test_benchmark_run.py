"""tools/benchmarks/run.py bookkeeping: resume, tables and plot, with a mocked run function.

No model is built or trained here: ``run_all`` takes the measuring functions as arguments.
"""
import json
import os.path as osp

import pytest

from tools.benchmarks import run as bench



def fake_run(calls, fail=()):
    def run_fn(task, rule, sparsity, method, results):
        calls.append((task, rule, sparsity, method))
        if method in fail:
            raise RuntimeError('boom')
        results[f'full|{task}|{rule}|s{sparsity:g}|pruned'] = dict(metric=20.0)
        metric = {'dfbf': 90.0, 'noise': 40.0, 'real': 95.0, 'dfbf+lop': 91.0}[method]
        return dict(metric=metric - 10 * sparsity, pruned=20.0, macs=1e7 * (1 - sparsity),
                    macs_teacher=1e7, params=3e5, params_teacher=7e5, latency_ms=2.0,
                    latency_teacher_ms=3.0, finetune_s=12.0, wall_s=20.0,
                    synthesis_s=30.0 if method.startswith('dfbf') else None, num_images=256,
                    epochs=40, distill=dict(distance='l1'))
    return run_fn


def test_run_all_resumes_and_reports(tmp_path):
    out = str(tmp_path)
    path = osp.join(out, 'results.json')
    args = bench.parse_args(['--tasks', 'cls', '--sparsities', '0.5', '0.7', '--rules', 'uniform',
                             '--methods', 'dfbf', 'noise', 'real', 'dfbf+lop', '--out', out])
    calls, teacher_calls = [], []

    def teacher_fn(task):
        teacher_calls.append(task)
        return dict(metric=99.0)

    # first pass: dfbf+lop fails, everything else is recorded
    results, failed = bench.run_all(args, fake_run(calls, fail=('dfbf+lop', )), teacher_fn, path,
                                    log=lambda *a: None)
    assert failed == ['full|cls|uniform|s0.5|dfbf+lop', 'full|cls|uniform|s0.7|dfbf+lop']
    assert len(calls) == 8 and teacher_calls == ['cls']
    saved = json.load(open(path))
    assert saved['full|cls|uniform|s0.5|real']['metric'] == pytest.approx(90.0)
    assert 'full|cls|uniform|s0.5|dfbf+lop' not in saved

    # rerun: only the failed runs are measured again; the teacher is not re-evaluated
    calls.clear()
    results, failed = bench.run_all(args, fake_run(calls), teacher_fn, path, log=lambda *a: None)
    assert failed == [] and teacher_calls == ['cls']
    assert calls == [('cls', 'uniform', 0.5, 'dfbf+lop'), ('cls', 'uniform', 0.7, 'dfbf+lop')]

    md, png = bench.write_outputs(results, out, 'full')
    text = open(md).read()
    assert '## cls: top-1 (%), teacher 99.00' in text
    assert '| uniform | 0.5 | 50.0 % | 20.00 | 85.00 (12 s) | 35.00 (12 s) | 90.00 (12 s) | 86.00 (12 s) |' in text
    # detail row: % of teacher and the gap to the real-data bound of the same setting
    assert '| uniform | 0.7 | dfbf | 83.00 | 83.8 | -5.00 |' in text
    assert osp.getsize(png) > 0


def test_missing_teacher_skips_task(tmp_path):
    args = bench.parse_args(['--tasks', 'det', '--out', str(tmp_path)])
    logs = []

    def teacher_fn(task):
        raise FileNotFoundError('no teacher checkpoint checkpoints/digits_det_teacher.pth')

    results, failed = bench.run_all(args, fake_run([]), teacher_fn,
                                    osp.join(str(tmp_path), 'results.json'), log=logs.append)
    assert results == {} and failed == []
    assert logs == ['[benchmark] det: skipped (no teacher checkpoint '
                    'checkpoints/digits_det_teacher.pth)']


def test_bad_sparsity_is_one_line_error():
    with pytest.raises(SystemExit):
        bench.parse_args(['--sparsities', '1.5'])


def test_results_of_concurrent_benchmarks_are_merged(tmp_path):
    """Two benchmark processes (e.g. one task per core) each save only what they ran: neither
    erases the other's records."""
    path = str(tmp_path / 'results.json')
    first, second = {'full|det|teacher': dict(metric=1.0)}, {'full|pose|teacher': dict(metric=2.0)}
    bench.save_results(first, path)
    bench.save_results(second, path)
    first['full|det|uniform|s0.5|dfbf'] = dict(metric=3.0)
    bench.save_results(first, path)
    assert sorted(bench.load_results(path)) == ['full|det|teacher', 'full|det|uniform|s0.5|dfbf',
                                                'full|pose|teacher']


@pytest.mark.slow
def test_neck_suffix_turns_on_the_neck_loss(tmp_path):
    """``+neck`` rows (synthesis_methods) / ``dfbf+neck`` (run.py) fine-tune with the frozen
    neck's outputs matched; their base rows do not."""
    from tools.benchmarks import synthesis_methods as sm
    args = sm.parse_args(['--tasks', 'det', '--out', str(tmp_path)])
    with_neck = sm.base_config('det', args, 0.5, 'di_x4c+neck', str(tmp_path / 'a'))
    plain = sm.base_config('det', args, 0.5, 'di_x4c', str(tmp_path / 'b'))
    real = sm.base_config('det', args, 0.5, 'real+neck', str(tmp_path / 'c'))
    assert with_neck.dfbf['distill']['neck_weight'] == 1.0
    assert real.dfbf['distill']['neck_weight'] == 1.0 and real.dfbf['train_data'] == 'real'
    assert not plain.dfbf['distill'].get('neck_weight')
    assert sm.base_method('di_x4c+neck') == 'di_x4c' and 'di_x4c+neck' in sm.METHODS


def test_layernorm_tasks_prune_to_half_the_macs_unless_a_ratio_rule_is_asked(tmp_path):
    """vit / convnext: their configs prune to target=dict(macs=0.5); the `macs` rule sets the
    asked fraction, the ratio rules replace the target by their sparsity; cls keeps its config's."""
    args = bench.parse_args(['--tasks', 'vit', 'convnext', '--out', str(tmp_path)])
    for task in ('vit', 'convnext'):
        cfg = bench.task_config(task, args, 'macs', 0.5, 'noise', str(tmp_path / task))
        assert cfg.dfbf['pruner']['target'] == dict(macs=0.5), task
        assert cfg.dfbf['train_data'] == 'noise'
        assert cfg.dfbf['teacher_checkpoint'].endswith(f'checkpoints/digits_{task}_teacher.pth')
        assert cfg.dfbf['synthesizer']['type'] == 'DeepInversionSynthesizer'
        cfg = bench.task_config(task, args, 'uniform', 0.3, 'real', str(tmp_path / task))
        assert cfg.dfbf['pruner']['target'] is None and cfg.dfbf['pruner']['sparsity'] == 0.3
    cfg = bench.task_config('cls', args, 'layer', 0.7, 'dfbf', str(tmp_path / 'cls'))
    assert cfg.dfbf['pruner']['sparsity'] == 0.7 and cfg.dfbf['pruner']['layer_dependent']
    assert not cfg.dfbf['pruner'].get('target')
