"""ONNX export checked in onnxruntime, the profile's onnxruntime rows, and the load note."""
import copy

import pytest
import torch
import torch.nn as nn
from mmpretrain.models.backbones import ResNet_CIFAR

from dfbf_mm import cost
from dfbf_mm.export import format_profile, profile_backbones, timing_spread
from dfbf_mm.export import profile as profile_mod
from dfbf_mm.export.onnx import ONNX_TOL, compare_onnx, export_checked, export_onnx, onnx_session
from dfbf_mm.pruning import L1FilterPruner

pytest.importorskip('onnxruntime')


@pytest.fixture(scope='module')
def pair():
    torch.manual_seed(0)
    teacher = ResNet_CIFAR(depth=18, base_channels=8, out_indices=(2, 3))
    teacher.eval()  # mm backbones' train() returns None
    pruned = copy.deepcopy(teacher)
    L1FilterPruner(sparsity=0.5).prune(pruned, torch.randn(1, 3, 32, 32))
    pruned.eval()
    return teacher, pruned


@pytest.mark.slow
def test_pruned_backbone_exports_and_matches(pair, tmp_path):
    _, pruned = pair
    x = torch.randn(2, 3, 32, 32)
    path = export_onnx(pruned, x, str(tmp_path / 'b.onnx'))
    session = onnx_session(path)
    assert [o.name for o in session.get_outputs()] == ['output0', 'output1']
    # the batch axis is dynamic: a batch size other than the traced one runs and matches too
    for b in (1, 3):
        diff = compare_onnx(pruned, session, torch.randn(b, 3, 32, 32))
        assert 0 <= diff <= ONNX_TOL
    # a model that is not the exported one is told apart, naming the output
    other = copy.deepcopy(pruned)
    with torch.no_grad():
        other.layer4[-1].conv2.weight.mul_(1.5)
    with pytest.raises(ValueError, match=r'^onnx: output1 \(1, \d+, 4, 4\) differs from PyTorch by'):
        compare_onnx(other, session, torch.randn(1, 3, 32, 32))


class _TensorModel(nn.Module):
    """A whole model with the mm ``mode`` signature; ``mode='tensor'`` returns nested outputs."""

    def __init__(self, backbone, fail=False):
        super().__init__()
        self.backbone, self.head, self.fail = backbone, nn.Conv2d(backbone.layer4[-1].conv2.out_channels, 5, 1), fail

    def forward(self, x, mode='tensor'):
        feats = self.backbone(x)
        if self.fail:  # an op the ONNX exporter does not support (as a post-processing step may be)
            return {'eig': torch.linalg.eigvalsh(feats[1].flatten(2) @ feats[1].flatten(2).transpose(1, 2))}
        return ([self.head(feats[1])], (feats[0],))


@pytest.mark.slow
def test_export_checked_whole_model_else_backbone(pair, tmp_path):
    _, pruned = pair
    x = torch.randn(1, 3, 32, 32)
    path, what, diff, why = export_checked(_TensorModel(pruned), pruned, x, str(tmp_path), 'm')
    assert (what, why) == ('model', None) and path.endswith('m.onnx') and diff <= ONNX_TOL
    assert len(onnx_session(path).get_outputs()) == 2
    path, what, diff, why = export_checked(_TensorModel(pruned, fail=True), pruned, x, str(tmp_path), 'm')
    assert what == 'backbone' and path.endswith('m_backbone.onnx') and diff <= ONNX_TOL
    assert why.startswith('UnsupportedOperatorError: ') and 'linalg_eigvalsh' in why
    assert not (tmp_path / 'm.onnx').exists()  # no stale whole-model file beside the backbone one


@pytest.mark.slow
def test_profile_onnxruntime_rows_and_export_failure(pair, monkeypatch):
    teacher, pruned = pair
    rows, table = profile_backbones(teacher, pruned, (32, 32), batch_sizes=(1, 2), runs=1, warmup=1, onnx=True)
    by = {r['metric']: r for r in rows}
    diff = next(r for r in rows if r['metric'].startswith('onnxruntime max abs diff'))
    assert 0 <= diff['teacher'] <= ONNX_TOL and 0 <= diff['pruned'] <= ONNX_TOL
    for b in (1, 2):
        assert by[f'latency ms (batch {b}, cpu, onnxruntime)']['pruned'] > 0
        assert by[f'speed-up / FLOPs-ratio (batch {b}, onnxruntime)']['pruned'] > 0
    assert '| latency ms (batch 2, cpu, onnxruntime)' in table

    def broken(*a, **k):
        raise RuntimeError('Exporting the operator foo to ONNX opset version 17 is not supported\nmore')
    monkeypatch.setattr(torch.onnx, 'export', broken)
    rows, table = profile_backbones(teacher, pruned, (32, 32), batch_sizes=(1,), runs=1, warmup=1, onnx=True)
    assert 'latency ms (batch 1, cpu)' in {r['metric'] for r in rows}  # the eager rows stand
    assert rows[-1]['metric'] == 'onnxruntime latency'
    assert rows[-1]['note'] == ('not measured: ONNX export or check failed (RuntimeError: Exporting the '
                                'operator foo to ONNX opset version 17 is not supported)')
    assert table.splitlines()[-1].startswith('| onnxruntime latency | not measured')


def test_timing_spread():
    assert timing_spread([0.01]) == 0.0
    assert timing_spread([0.01] * 5) == 0.0
    # p10 / p50 / p90 of 1..5 ms (linear): 1.4, 3, 4.6 -> (4.6 - 1.4) / 3
    assert timing_spread([0.005, 0.001, 0.003, 0.002, 0.004]) == pytest.approx(3.2 / 3)


def test_profile_notes_load_and_machine(pair, monkeypatch):
    """Timings injected through the clock: the teacher's forwards alternate 1 ms / 3 ms (a
    loaded machine), the pruned ones take a steady 1 ms; only the teacher's spread flags."""
    teacher, pruned = pair
    durations = {id(teacher): [0.001, 0.003], id(pruned): [0.001]}
    clock = [0.0]
    calls = {}

    def fake_forward(m):
        def run(x):
            k = calls[id(m)] = calls.get(id(m), -1) + 1
            seq = durations[id(m)]
            clock[0] += seq[k % len(seq)]
        return run

    monkeypatch.setattr(cost.time, 'perf_counter', lambda: clock[0])  # the clock latencies are timed with
    wrapped = []
    for m in (teacher, pruned):
        w = copy.copy(m)
        w.forward = fake_forward(m)
        wrapped.append(w)
    # MACs are counted on the real modules; only the latency forwards are faked
    monkeypatch.setattr(profile_mod, 'measure_latencies', _wrap(profile_mod.measure_latencies, wrapped, (teacher, pruned)))
    rows, table = profile_backbones(teacher, pruned, (32, 32), batch_sizes=(1,), runs=4, warmup=0)
    lat = next(r for r in rows if r['metric'] == 'latency ms (batch 1, cpu)')
    assert lat['pruned'] == pytest.approx(1.0) and lat['teacher'] == pytest.approx(2.0)
    assert lat['spread'] == pytest.approx(timing_spread([0.001, 0.003, 0.001, 0.003]))
    assert lat['spread'] > profile_mod.SPREAD_BOUND
    lines = table.splitlines()
    assert lines[0].startswith('| metric (on ') and 'CPUs, torch ' in lines[0]
    assert '| latency ms (batch 1, cpu) (spread 100 %: loaded) |' in table
    assert lines[-1].startswith('note: 1 latency row(s) marked "loaded"') and 'more than 20 %' in lines[-1]
    # a steady run is not flagged and has no note
    calm = [dict(r, spread=0.05) if 'spread' in r else r for r in rows]
    text = format_profile(calm, 'test machine')
    assert 'loaded' not in text and text.splitlines()[0] == '| metric (on test machine) | teacher | pruned | pruned/teacher |'


def _wrap(measure, fakes, reals):
    """``measure_latencies`` that times the fake modules in place of the real ones."""
    def run(models, *a, **k):
        by = {id(r): f for r, f in zip(reals, fakes)}
        return measure([by.get(id(m), m) for m in models], *a, **k)
    return run
