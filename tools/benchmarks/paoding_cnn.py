"""Paoding on the digits CNN classifier: accuracy and FGSM robustness vs pruning ratio, then DFBF.

    python -m tools.benchmarks.paoding_cnn [--ratios 0.1 ... 0.7] [--finetune-ratios 0.3 0.5 0.7]
        [--finetune-methods stochastic l1] [--out-dir docs] [--work-dir work_dirs/paoding_cnn]

The model is the offline benchmark's classification teacher (``checkpoints/digits_cls_teacher.pth``,
``configs/benchmarks/digits_cls_teacher.py``: mmpretrain ImageClassifier, ResNet_CIFAR-18 with 16
base channels, a plain LinearClsHead). Its head has no hidden layer, so Paoding prunes the inner
channels of the eight BasicBlocks (``conv1 -> bn1 -> ReLU -> conv2``) -- our conv-channel
extension of the paper's dense-unit method, see ``dfbf_mm/pruning/paoding/conv_blocks.py``.
Methods, each pruning exactly those eight inner layers by the same ``floor(ratio * width)``:

- Paoding STOCHASTIC (the paper's selection; progressive step 0.05, recursive),
- Paoding IMPACT (greedy over a pool, progressive step 0.05, recursive),
- Paoding BASELINE (lowest pair saliency, one shot; disjoint pairs cap it at 0.5),
- one-shot L1 (``L1FilterPruner(sparsity=ratio, ignore=['conv1'])``: the stem is left alone,
  so the same eight layers lose the same number of channels),

each evaluated on the test split with mmpretrain's ``Accuracy`` and our ``FGSMRobustness``
(eps as a fraction of the [0, 255] pixel range; the metric maps it through the data
preprocessor's std and clips to the normalised image of [0, 255]). Then "pruning + DFBF": the
pruned student is fine-tuned data-free by ``DataFreeDistillRunner`` with the config's own
``dfbf`` block (256 DeepInversion images x 40 epochs; the synthetic cache of the offline
benchmark is reused when its settings match), only ``dfbf.pruner`` set to the method's pruner
config -- Paoding is a ``PRUNERS`` type, so ``pruner=dict(type='PaodingPruner', ...)`` is all it
takes. The fine-tuned student is exported by the ExportHook and evaluated from the exported
deploy config + checkpoint (plain ``Config.fromfile`` + strict load); the stock mmpretrain
``tools/test.py`` is also run on every export and its top-1 recorded.

No pruning decision uses data (Paoding: weights and the input range; L1: weights); the test
split is only evaluated. Pruner seed 42, runner seed 0 (the config's), 1 CPU thread.
Writes ``<out-dir>/paoding_cnn.md`` and ``paoding_cnn.png``; the fine-tuning results are kept
in ``<work-dir>/results.json`` so a rerun only fine-tunes what is missing (``--fresh`` redoes all).
"""
if not __package__:  # it imports its sibling modules through the package
    raise SystemExit('run it from the repository root as: python -m tools.benchmarks.paoding_cnn ARGS')
import argparse
import copy
import json
import os
import os.path as osp
import re
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

CONFIG = 'configs/benchmarks/dfbf_digits_cls.py'
TEACHER = 'checkpoints/digits_cls_teacher.pth'
EPSILONS = (0.01, 0.05, 0.1)
SEED = 42
STEP = 0.05
METHODS = ('stochastic', 'impact', 'baseline', 'l1')
LABELS = dict(teacher='unpruned', stochastic='Paoding STOCHASTIC', impact='Paoding IMPACT',
              baseline='Paoding BASELINE', l1='L1 one-shot')
INNER = re.compile(r'layer\d+\.\d+\.conv1')  # the BasicBlocks' inner convs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--ratios', nargs='+', type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                   help='pruning ratios evaluated without fine-tuning')
    p.add_argument('--finetune-ratios', nargs='+', type=float, default=[0.3, 0.5, 0.7])
    p.add_argument('--finetune-methods', nargs='*', default=['stochastic', 'l1'], choices=METHODS)
    p.add_argument('--data', default='data/digits')
    p.add_argument('--cache-dir', default='work_dirs/benchmark/cache/cls',
                   help='synthetic-image cache (shared with tools/benchmarks/run.py)')
    p.add_argument('--work-dir', default='work_dirs/paoding_cnn')
    p.add_argument('--out-dir', default=osp.join(REPO, 'docs'))
    p.add_argument('--fresh', action='store_true', help='ignore fine-tuning results of earlier runs')
    args = p.parse_args(argv)
    for r in args.ratios + args.finetune_ratios:
        if not 0 < r < 1:
            p.error(f'ratio {r} is not in (0, 1)')
    return args


def load_config(data: str):
    from mmengine.config import Config
    from tools.benchmarks.train_teacher import set_data_root
    cfg = Config.fromfile(osp.join(REPO, CONFIG))
    return set_data_root(cfg, data)


def pruner_cfg(method: str, ratio: float, input_range) -> dict:
    if method == 'l1':
        return dict(type='L1FilterPruner', sparsity=ratio, ignore=['conv1'])
    cfg = dict(type='PaodingPruner', target=ratio, mode=method, conv_blocks=True, seed=SEED,
               input_range=list(input_range))
    if method != 'baseline':
        cfg.update(step=STEP, recursive=True)
    return cfg


def inner_ratio(teacher, student) -> float:
    """Share of the inner channels removed (the eight BasicBlock conv1 layers)."""
    t = {n: m.out_channels for n, m in teacher.backbone.named_modules() if INNER.fullmatch(n)}
    s = {n: m.out_channels for n, m in student.backbone.named_modules() if INNER.fullmatch(n)}
    return 1 - sum(s.values()) / sum(t.values())


def make_evaluator(batches):
    """``evaluate(model) -> dict``: Accuracy and FGSMRobustness over the (cached) test batches."""
    from mmengine.evaluator import Evaluator
    from mmpretrain.evaluation import Accuracy
    from dfbf_mm.evaluation import FGSMRobustness

    def evaluate(model):
        model.eval()
        fgsm = FGSMRobustness(epsilons=EPSILONS, pixel_max=255.0)
        fgsm.model = model
        evaluator = Evaluator([Accuracy(topk=(1, )), fgsm])
        n = 0
        for batch in batches:
            with torch.no_grad():
                outs = model.test_step(batch)
            evaluator.process(outs, batch)
            n += len(outs)
        m = evaluator.evaluate(n)
        out = dict(accuracy=float(m['accuracy/top1']), clean_correct=int(m['fgsm/clean_correct']))
        out.update({f'fgsm_{e:g}': float(m[f'fgsm/eps_{e:g}']) for e in EPSILONS})
        return out
    return evaluate


def stock_test(config: str, checkpoint: str, work_dir: str) -> float:
    """Top-1 printed by the stock mmpretrain ``tools/test.py`` (a subprocess) for an export."""
    import subprocess
    import mmpretrain
    tool = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'test.py')
    if not osp.isfile(tool):
        tool = osp.join(REPO, 'tools', 'test.py')  # ours wraps the same Runner.test()
    out = subprocess.run([sys.executable, tool, config, checkpoint, '--work-dir', work_dir],
                         cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    found = re.findall(r'accuracy/top1: ([0-9.]+)', out.stdout + out.stderr)
    if out.returncode or not found:
        raise RuntimeError(f'stock tools/test.py failed on {config}: {(out.stderr or out.stdout)[-300:]}')
    return float(found[-1])


def backbone_params(model) -> int:
    return sum(p.numel() for p in model.backbone.parameters())


def finetune(method, ratio, input_range, args, expected_student):
    """Prune + DFBF fine-tune with DataFreeDistillRunner; evaluate the exported model."""
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    from dfbf_mm.engine import DataFreeDistillRunner
    from dfbf_mm.stock_model import build_stock_model
    from tools.benchmarks.run import make_bench_hook

    cfg = load_config(args.data)
    dfbf = cfg.dfbf.to_dict()
    dfbf['teacher_checkpoint'] = osp.join(REPO, TEACHER)
    dfbf['pruner'] = pruner_cfg(method, ratio, input_range)
    dfbf['synthetic_data']['cache_dir'] = args.cache_dir
    dfbf['schedule']['checkpoint_interval'] = dfbf['schedule']['epochs']
    cfg.dfbf = dfbf
    cfg.work_dir = osp.join(args.work_dir, 'runs', f'{method}_r{ratio:g}')
    cfg.experiment_name = f'{method}_r{ratio:g}_{time.time_ns()}'
    start = time.perf_counter()
    runner = DataFreeDistillRunner.from_cfg(cfg)
    runner.model._is_init = True  # keep the loaded weights (see tools/benchmarks/run.py)
    student = runner.model.student.backbone.state_dict()
    same = student.keys() == expected_student.keys() and all(
        torch.equal(student[k], expected_student[k]) for k in student)
    if not same:
        raise RuntimeError(f'{method} r={ratio}: the runner pruned a different student than the '
                           'stand-alone pruner (non-determinism?)')
    timer = make_bench_hook()  # fine-tuning wall time and the last val metrics
    runner.register_hook(timer)
    runner.train()
    paths = runner.message_hub.get_info('dfbf_export')
    deploy = Config.fromfile(paths['config'])
    model = build_stock_model(deploy)
    load_checkpoint(model, deploy.load_from, map_location='cpu', strict=True, logger='silent')
    top1 = stock_test(paths['config'], paths['checkpoint'], osp.join(cfg.work_dir, 'stock_test'))
    return model, dict(finetune_s=timer.train_s, wall_s=time.perf_counter() - start,
                       runner_val_accuracy=float(timer.metrics['accuracy/top1']) if timer.metrics else None,
                       stock_test_accuracy=top1, export=osp.relpath(paths['config'], REPO))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    import dfbf_mm  # noqa: F401
    from mmengine.runner import Runner
    from dfbf_mm.registry import PRUNERS
    from dfbf_mm.stock_model import build_stock_model, load_weights, pixel_range

    os.makedirs(args.work_dir, exist_ok=True)
    cfg = load_config(args.data)
    teacher = build_stock_model(cfg)
    load_weights(teacher, osp.join(REPO, TEACHER), 'teacher')
    teacher.eval()
    lo, hi = pixel_range(teacher)  # the normalised image of pixels [0, 255]
    input_range = (round(float(lo.min()), 4), round(float(hi.max()), 4))
    batches = list(Runner.build_dataloader(copy.deepcopy(cfg.test_dataloader)))
    evaluate = make_evaluator(batches)
    example = torch.zeros(1, 3, 32, 32)

    rows = [dict(method='teacher', stage='pruned', target=0.0, ratio=0.0,
                 params=backbone_params(teacher), **evaluate(teacher))]
    print(f'teacher: {rows[0]}', flush=True)
    students, scores = {}, {}
    for method in METHODS:
        for r in sorted(set(args.ratios) | set(args.finetune_ratios)):
            if method == 'baseline' and r > 0.5 + 1e-9:
                continue  # disjoint pair merges cannot remove more than half in one shot
            student = copy.deepcopy(teacher)
            pruner = PRUNERS.build(pruner_cfg(method, r, input_range))
            t = time.perf_counter()
            pruner.prune(student.backbone, example)
            secs = time.perf_counter() - t
            if method in ('stochastic', 'impact'):  # scores of the accepted merges (lower = safer)
                scores[(method, r)] = [m[2] for rec in pruner.records[1:] for v in rec['merged'].values()
                                       for m in v]
            row = dict(method=method, stage='pruned', target=r, ratio=inner_ratio(teacher, student),
                       params=backbone_params(student), prune_s=secs, **evaluate(student))
            rows.append(row)
            students[(method, r)] = {k: v.clone() for k, v in student.backbone.state_dict().items()}
            print(f'{method} r={r:g}: {row}', flush=True)

    res_path = osp.join(args.work_dir, 'results.json')
    done = {} if args.fresh or not osp.isfile(res_path) else json.load(open(res_path))
    for method in args.finetune_methods:
        for r in args.finetune_ratios:
            if (method, r) not in students:
                continue
            key = f'{method}|{r:g}'
            if key not in done:
                print(f'DFBF fine-tuning {method} r={r:g} ...', flush=True)
                model, info = finetune(method, r, input_range, args, students[(method, r)])
                done[key] = dict(info, params=backbone_params(model), **evaluate(model))
                with open(res_path, 'w') as f:
                    json.dump(done, f, indent=1, sort_keys=True)
            pruned = next(x for x in rows if x['method'] == method and x['target'] == r)
            rows.append(dict(done[key], method=method, stage='pruned + DFBF', target=r,
                             ratio=pruned['ratio']))
            print(f'{method} r={r:g} + DFBF: {done[key]}', flush=True)
    write_outputs(args, rows, scores, input_range, sum(len(b['data_samples']) for b in batches))


def _table(rows, n: int):
    head = ('| method | stage | target | inner channels removed | backbone params | top-1 (%) | '
            + ' | '.join(f'FGSM rob. eps={e:g}' for e in EPSILONS)
            + f' | correct (of {n}) | stock test.py top-1 of the export |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    order = {m: i for i, m in enumerate(('teacher', ) + METHODS)}
    for r in sorted(rows, key=lambda x: (x['stage'] != 'pruned' and x['method'] != 'teacher',
                                         order[x['method']], x['target'])):
        lines.append(f'| {LABELS[r["method"]]} | {r["stage"] if r["method"] != "teacher" else "-"} | '
                     f'{r["target"]:g} | {r["ratio"]:.3f} | {r["params"] / 1e3:.1f} k | '
                     f'{r["accuracy"]:.2f} | '
                     + ' | '.join(f'{r[f"fgsm_{e:g}"]:.4f}' for e in EPSILONS)
                     + f' | {r["clean_correct"]} | '
                     + (f'{r["stock_test_accuracy"]:.2f}' if r.get('stock_test_accuracy') is not None else '')
                     + ' |')
    return '\n'.join(lines)


def write_outputs(args, rows, scores, input_range, num_test):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import statistics
    teacher = rows[0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = dict(stochastic=('tab:blue', 'o'), impact=('tab:orange', 's'),
                  baseline=('tab:green', '^'), l1=('tab:red', 'x'))
    for r in rows:  # correct and surviving FGSM, share of all test images
        r['robust_0.05'] = r['accuracy'] * r['fgsm_0.05']
    for ax, key, title in zip(axes, ('accuracy', 'fgsm_0.05', 'robust_0.05'),
                              ('test accuracy (%)', 'FGSM robustness, eps=0.05 (of the correct)',
                               'robust accuracy, eps=0.05 (% of all test images)')):
        for method, (color, marker) in styles.items():
            for stage, ls in (('pruned', '-'), ('pruned + DFBF', '--')):
                pts = [teacher] + sorted((r for r in rows if r['method'] == method and r['stage'] == stage),
                                         key=lambda r: r['target'])
                if len(pts) < 2:
                    continue
                ax.plot([p['ratio'] for p in pts], [p[key] for p in pts], ls, color=color, marker=marker,
                        markersize=4, label=f'{LABELS[method]}{" + DFBF" if stage != "pruned" else ""}')
        ax.set_title(title)
        ax.set_xlabel('share of the inner (BasicBlock conv1) channels removed')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(args.out_dir, exist_ok=True)
    png = osp.join(args.out_dir, 'paoding_cnn.png')
    fig.savefig(png, dpi=110)
    ft = [r for r in rows if r['stage'] != 'pruned']
    budget = ''
    if ft:
        budget = (f'DFBF fine-tuning wall time (training epochs only, 1 thread on a shared 2-core '
                  f'machine): {min(r["finetune_s"] for r in ft):.0f}-{max(r["finetune_s"] for r in ft):.0f} s '
                  'per run. Top-1 of the exported model = top-1 of the runner\'s own validation = '
                  'top-1 printed by the stock mmpretrain `tools/test.py` on the export, in every run: '
                  f'{all(abs(r["runner_val_accuracy"] - r["accuracy"]) < 1e-4 and abs(r["stock_test_accuracy"] - r["accuracy"]) < 1e-3 for r in ft)}.')
    score_lines = []
    for (method, r), s in sorted(scores.items()):
        if s and abs(r - 0.5) < 1e-9:
            score_lines.append(f'{LABELS[method]} at 0.5: {len(s)} accepted merges, impact score '
                               f'min {min(s):.4f}, median {statistics.median(s):.4f}, max {max(s):.4f}')
    text = f"""# Paoding on the digits CNN (conv-channel extension) and Paoding + DFBF

Output of `python -m tools.benchmarks.paoding_cnn` (see its docstring). Model: the offline
benchmark's classification teacher (`{TEACHER}`, mmpretrain ImageClassifier, ResNet_CIFAR-18 with
16 base channels, LinearClsHead; {num_test} test images). Its head has no hidden layer, so Paoding prunes
the inner channels of the eight BasicBlocks (`conv1 -> bn1 -> ReLU -> conv2`): **our extension**
of the paper's dense-unit method (BN folded for the decisions, kept in the model), not the paper's
claim. Every method removes `floor(target x width)` channels from exactly those eight layers
(L1 one-shot = `L1FilterPruner(sparsity, ignore=['conv1'])`, so it leaves the stem alone like
Paoding; this is why its numbers differ from `docs/benchmark_results.md`, where L1 also prunes
the stem). Paoding: seed {SEED}; STOCHASTIC and IMPACT progressive with step {STEP}, recursive,
each target its own run; BASELINE one shot, capped at 0.5 by disjoint pairs. Input range for the
intervals: the normalised image of pixels [0, 255], {list(input_range)}; blocks whose input is
not a sequential chain from the image (after a residual add) take that range as their input's
range (logged by the pruner).

"pruned + DFBF": the pruned student fine-tuned data-free by `DataFreeDistillRunner` with the
config `{CONFIG}` and only `dfbf.pruner` replaced (256 DeepInversion images x 40 epochs, synthetic
cache `{args.cache_dir}`), then exported (deploy config + checkpoint + channel spec) and evaluated
from the export (`Config.fromfile` + strict load). {budget}

Accuracy: mmpretrain `Accuracy` top-1. "FGSM rob." = our `FGSMRobustness`: share of the correctly
classified test images whose prediction survives FGSM at eps, eps a fraction of the [0, 255]
pixel range (step eps x 255 / std in the normalised space, clipped to the image of [0, 255]);
"correct" is how many images it is computed over. Robustness is conditional on being
correct, so a badly pruned model can score high on the few images it still gets right: read it
next to accuracy (the plot's right panel multiplies the two: images correct and robust, out of
all). One seed and {num_test} test images: one image is {100 / num_test:.2f} points of accuracy, so differences of a
few images between methods are within noise. No pruning decision uses data; the test split is
only evaluated.

{_table(rows, num_test)}

Impact scores of the accepted merges (score = 0.75 logistic(L) + 0.25 logistic(ENT), lower is
safer): {'; '.join(score_lines) or 'n/a'}. Over conv blocks, L sums interval widths over
16-128 output channels x 9 kernel taps with hulls over all pixels, so logistic(L) is saturated
and the selection is driven by saliency order and ENT.

![accuracy and FGSM robustness vs ratio](paoding_cnn.png)
"""
    md = osp.join(args.out_dir, 'paoding_cnn.md')
    with open(md, 'w') as f:
        f.write(text)
    print(_table(rows, num_test))
    print(f'wrote {md} and {png}')


if __name__ == '__main__':
    main()
