"""Offline benchmark: what data-free fine-tuning recovers after pruning (docs/benchmark_results.md).

    python -m tools.benchmarks.run [--tasks cls det pose vit convnext] [--sparsities 0.3 0.5 0.7]
        [--rules uniform layer macs macs-global] [--methods dfbf noise real dfbf+lop dfbf+sp dfbf+lop+sp
         dfbf+aug dfbf+mix dfbf+cutmix dfbf+mixup real+aug real+mix dfbf+neck real+neck]
        [--seed 0] [--epochs N] [--quick]
        [--out work_dirs/benchmark] [--data data/digits] [--report-only | --seed-dirs DIR [DIR ...]]

For every task (digits classification / detection / keypoints; ``vit`` / ``convnext``: LayerNorm
classifiers on the classification data), sparsity, pruning rule
(``uniform``: one L1 ratio; ``layer``: DFBF's width-dependent ratio) and method, it prunes the
committed teacher with ``DataFreeDistillRunner`` and measures on the test split:

* the teacher metric (stock Runner, once per task) and the pruned model without fine-tuning;
* the metric after fine-tuning the pruned backbone with the DFBF feature loss on
  ``dfbf`` = DeepInversion images (data-free), ``noise`` = Gaussian noise inputs, ``real`` =
  the real train split (upper bound), all with the same loss and iteration budget, and the
  LOP / SP variants ``dfbf+lop`` (LOP expansion, merged for val/export), ``dfbf+sp``
  (similarity-preserving KD added) and ``dfbf+lop+sp``; ``dfbf+aug`` = DFBF on random augmented
  views of the synthetic images (``dfbf.views``: flip, random resized crop, brightness/contrast
  jitter; docs/augmented_views.md), ``dfbf+mix`` = the same plus CutMix between the images of a
  batch, ``dfbf+cutmix`` = CutMix alone, ``dfbf+mixup`` = ``dfbf+aug`` plus mixup, ``real+aug`` /
  ``real+mix`` = the real-data bound with ``dfbf+aug``'s / ``dfbf+mix``'s views; ``dfbf+neck``
  (and ``real+neck``) = the frozen stock neck's outputs matched too;
* backbone params, MACs and CPU latency (the ExportHook's profile rows), the synthesis wall
  time (once per task: all runs of a task share one synthetic cache) and the fine-tuning wall
  time (training epochs only; no validation, export or synthesis).

Output in ``--out``: ``results.json`` (every run; a rerun skips finished runs, so an
interrupted benchmark resumes), ``results.md`` (tables), ``metric_vs_flops.png`` and
``synthetic_images_<task>.png`` (the grid of what the student was trained on). ``--quick`` is
a smoke-test budget, kept apart from the full one (its own keys and table).
"""
if not __package__:  # it imports its sibling modules through the package
    raise SystemExit('run it from the repository root as: python -m tools.benchmarks.run ARGS')
import argparse
import copy
import datetime
import json
import os
import os.path as osp
import shutil
import time
import traceback

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# task -> dfbf config, teacher checkpoint, metric key, scale to percent / points, label
TASKS = {
    'cls': dict(config='configs/benchmarks/dfbf_digits_cls.py',
                teacher='checkpoints/digits_cls_teacher.pth', metric='accuracy/top1',
                scale=1.0, label='top-1 (%)'),
    'det': dict(config='configs/benchmarks/dfbf_digits_det.py',
                teacher='checkpoints/digits_det_teacher.pth', metric='coco/bbox_mAP',
                scale=100.0, label='bbox mAP'),
    'pose': dict(config='configs/benchmarks/dfbf_digits_pose.py',
                 teacher='checkpoints/digits_pose_teacher.pth', metric='coco/AP',
                 scale=100.0, label='keypoint AP'),
    # LayerNorm classifiers (no BatchNorm) on the cls data: FFN / MLP hidden channels pruned
    'vit': dict(config='configs/benchmarks/dfbf_digits_vit.py',
                teacher='checkpoints/digits_vit_teacher.pth', metric='accuracy/top1',
                scale=1.0, label='top-1 (%)'),
    'convnext': dict(config='configs/benchmarks/dfbf_digits_convnext.py',
                     teacher='checkpoints/digits_convnext_teacher.pth', metric='accuracy/top1',
                     scale=1.0, label='top-1 (%)'),
}
# rule -> the dfbf overrides of a run at `sparsity`; for the target rules the
# "sparsity" is the fraction of the backbone's MACs removed (L1FilterPruner target=dict(macs=s)):
# one-shot uniform and one-shot global ranking. The ratio rules drop a target the task config
# may name (the vit / convnext configs prune to target=dict(macs=0.5)).
RULES = {
    'uniform': lambda s: dict(pruner=dict(sparsity=s, layer_dependent=False, target=None)),
    'layer': lambda s: dict(pruner=dict(sparsity=s, layer_dependent=True, target=None)),
    'macs': lambda s: dict(pruner=dict(target=dict(macs=s), layer_dependent=False)),
    'macs-global': lambda s: dict(pruner=dict(target=dict(macs=s), layer_dependent=False, ranking='global')),
}
DEFAULT_RULES = ['uniform', 'layer']
# gamma of the SP term. Tung & Mori's 3000 (spec lop.md) makes SP dominate here: at the start
# of a cls smoke run loss_sp was 54.1 at gamma 3000 vs loss_feat 8.9, so we use 300 (same order).
SP_WEIGHT = 300.0
METHODS = {
    'dfbf': dict(train_data='synthetic'),
    'noise': dict(train_data='noise'),
    'real': dict(train_data='real'),
    'dfbf+lop': dict(train_data='synthetic', overparam=dict(ratio=2)),
    'dfbf+sp': dict(train_data='synthetic', sp_loss=dict(weight=SP_WEIGHT, taps='features')),
    'dfbf+lop+sp': dict(train_data='synthetic', overparam=dict(ratio=2),
                        sp_loss=dict(weight=SP_WEIGHT, taps='features')),
    # augmented views of the training batch, the same to teacher and student (dfbf.views)
    'dfbf+aug': dict(train_data='synthetic', views=dict(flip=0.5, crop=0.5, jitter=0.2)),
    'dfbf+mix': dict(train_data='synthetic', views=dict(flip=0.5, crop=0.5, jitter=0.2,
                                                        mix='cutmix', mix_prob=0.5)),
    'real+aug': dict(train_data='real', views=dict(flip=0.5, crop=0.5, jitter=0.2)),
    'dfbf+cutmix': dict(train_data='synthetic', views=dict(flip=0, crop=1, jitter=0,
                                                           mix='cutmix', mix_prob=0.5)),
    'dfbf+mixup': dict(train_data='synthetic', views=dict(flip=0.5, crop=0.5, jitter=0.2,
                                                          mix='mixup', mix_prob=0.5)),
    'real+mix': dict(train_data='real', views=dict(flip=0.5, crop=0.5, jitter=0.2,
                                                   mix='cutmix', mix_prob=0.5)),
    # the neck's outputs alone (docs/detection_finetuning.md)
    'dfbf+neck': dict(train_data='synthetic', distill=dict(neck_weight=1.0)),
    'real+neck': dict(train_data='real', distill=dict(neck_weight=1.0)),
}
# Budgets: overrides of each task config's dfbf block. 'full' keeps every run to a few CPU
# minutes (2 shared cores) after a one-off synthesis per task; 'quick' is a smoke run.
BUDGETS = {
    'full': {
        'cls': dict(),  # the config's own: 256 images x 40 epochs (also `make demo`'s)
        # det: 160 epochs (lr step at 128); at 0.5 / 0.7 uniform, dfbf went 39.5 / 13.8 mAP
        # at 40 epochs -> 45.3 / 23.5 at 80 -> 45.6 / 33.2 at 160 (exploratory runs)
        'det': dict(synthetic_data=dict(num_images=128, batch_size=16),
                    schedule=dict(epochs=160, lr_steps=[128])),
        # pose: 160 epochs (lr step at 120); dfbf at 0.7 uniform went 76.65 AP at 40 epochs ->
        # 77.16 at 80 -> 77.83 at 160; 512 images x 80 epochs gave the same 77.88
        'pose': dict(synthetic_data=dict(num_images=256, batch_size=32),
                     schedule=dict(epochs=160, lr_steps=[120])),
        'vit': dict(),  # the configs' own: 256 images x 40 epochs, as cls
        'convnext': dict(),
    },
    'quick': {
        'cls': dict(synthetic_data=dict(num_images=64, batch_size=32),
                    synthesizer=dict(iterations=10), schedule=dict(epochs=1, lr_steps=[])),
        'det': dict(synthetic_data=dict(num_images=16, batch_size=8),
                    synthesizer=dict(iterations=5, half_res_iterations=0, coarse_iterations=5,
                                     settle_iters=2),
                    schedule=dict(epochs=1, lr_steps=[])),
        'pose': dict(synthetic_data=dict(num_images=32, batch_size=16),
                     synthesizer=dict(iterations=5, half_res_iterations=0),
                     schedule=dict(epochs=1, lr_steps=[])),
        'vit': dict(synthetic_data=dict(num_images=64, batch_size=32),
                    synthesizer=dict(iterations=10), schedule=dict(epochs=1, lr_steps=[])),
        'convnext': dict(synthetic_data=dict(num_images=64, batch_size=32),
                         synthesizer=dict(iterations=10), schedule=dict(epochs=1, lr_steps=[])),
    },
}
LATENCY_BATCH = 8
COLORS = {'pruned': '0.6', 'dfbf': 'tab:blue', 'noise': 'tab:orange', 'real': 'tab:green',
          'dfbf+lop': 'tab:red', 'dfbf+sp': 'tab:purple', 'dfbf+lop+sp': 'tab:brown',
          'dfbf+aug': 'tab:cyan', 'dfbf+mix': 'tab:olive', 'real+aug': 'tab:pink',
          'dfbf+cutmix': 'gold', 'dfbf+mixup': 'navy', 'real+mix': 'magenta',
          'dfbf+neck': 'crimson', 'real+neck': 'darkgreen'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS))
    parser.add_argument('--sparsities', nargs='+', type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument('--rules', nargs='+', default=DEFAULT_RULES, choices=list(RULES))
    parser.add_argument('--methods', nargs='+', default=['dfbf', 'noise', 'real'],
                        choices=list(METHODS))
    parser.add_argument('--seed', type=int, default=0,
                        help='fine-tuning seed (randomness.seed and dfbf.views.seed); results are '
                             'keyed without it, so give each seed its own --out')
    parser.add_argument('--epochs', type=int, default=None,
                        help='fine-tuning epochs instead of the budget\'s (lr steps scaled alike); '
                             'results are keyed without it, so give it its own --out')
    parser.add_argument('--quick', action='store_true', help='smoke-test budget')
    parser.add_argument('--out', default='work_dirs/benchmark')
    parser.add_argument('--data', default='data/digits', help='digits data (made if missing)')
    parser.add_argument('--report-only', action='store_true',
                        help='only rewrite results.md and the plot from results.json')
    parser.add_argument('--seed-dirs', nargs='+', metavar='DIR',
                        help='only print (and write to --out/seeds.md) the table of the runs of '
                             'these --out dirs (one per --seed): each seed\'s metric and the mean')
    args = parser.parse_args(argv)
    for s in args.sparsities:
        if not 0 < s < 1:
            parser.error(f'--sparsities: {s} is not in (0, 1)')
    return args


# ----------------------------------------------------------------------------- bookkeeping
def run_key(budget, task, rule, sparsity, method):
    return f'{budget}|{task}|{rule}|s{sparsity:g}|{method}'


def load_results(path):
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}: not valid JSON ({e}); fix or remove it') from None


def save_results(results, path):
    """Merge ``results`` into results.json and write it atomically, under a lock.

    Atomic: an interrupted benchmark never leaves a half-written file. Merged: records that
    another benchmark process (e.g. other tasks on the second core) saved meanwhile are kept;
    ``results`` then holds them too.
    """
    import fcntl
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = load_results(path)
        results.update({k: v for k, v in on_disk.items() if k not in results})
        tmp = f'{path}.{os.getpid()}.tmp'
        with open(tmp, 'w') as f:
            json.dump(results, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else copy.deepcopy(v)
    return out


def run_all(args, run_fn, teacher_fn, results_path, log=print):
    """Every (task, rule, sparsity, method) run not yet in results.json; returns the results.

    ``teacher_fn(task) -> dict`` and ``run_fn(task, rule, sparsity, method, results) -> dict``
    do the measuring (mocked in the tests); finished runs are saved one by one.
    """
    budget = 'quick' if args.quick else 'full'
    results = load_results(results_path)
    failed = []
    for task in args.tasks:
        tkey = f'{budget}|{task}|teacher'
        if tkey not in results:
            try:
                results[tkey] = teacher_fn(task)
            except FileNotFoundError as e:
                log(f'[benchmark] {task}: skipped ({e})')
                continue
            save_results(results, results_path)
        for rule in args.rules:
            for sparsity in args.sparsities:
                for method in args.methods:
                    key = run_key(budget, task, rule, sparsity, method)
                    if key in results:
                        log(f'[benchmark] {key}: done before, skipped')
                        continue
                    log(f'[benchmark] {key}: running')
                    try:
                        record = run_fn(task, rule, sparsity, method, results)
                    except Exception as e:  # keep going; report at the end
                        log(f'[benchmark] {key}: FAILED: {type(e).__name__}: {e}')
                        traceback.print_exc()
                        failed.append(key)
                        continue
                    record.update(task=task, rule=rule, sparsity=sparsity, method=method,
                                  budget=budget)
                    results[key] = record
                    save_results(results, results_path)
    return results, failed


# ----------------------------------------------------------------------------- measuring
def task_config(task, args, rule, sparsity, method, work_dir):
    """The task's dfbf config with budget, rule, sparsity and method applied."""
    from mmengine.config import Config
    from tools.benchmarks.train_teacher import set_data_root
    spec = TASKS[task]
    cfg = Config.fromfile(osp.join(REPO, spec['config']))
    set_data_root(cfg, args.data)
    budget = BUDGETS['quick' if args.quick else 'full'][task]
    dfbf = merge(cfg.dfbf.to_dict(), budget)
    dfbf = merge(dfbf, {k: v for k, v in METHODS[method].items()})
    dfbf['teacher_checkpoint'] = osp.join(REPO, spec['teacher'])
    dfbf = merge(dfbf, RULES[rule](sparsity))
    epochs = getattr(args, 'epochs', None)
    if epochs:  # a longer / shorter schedule, the lr steps at the same fractions of it
        old = dfbf['schedule']['epochs']
        dfbf['schedule']['lr_steps'] = [round(e * epochs / old) for e in dfbf['schedule']['lr_steps']]
        dfbf['schedule']['epochs'] = epochs
    seed = getattr(args, 'seed', 0)
    if seed:  # seed 0: the configs' own randomness, as every run before --seed
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)
        if dfbf.get('views'):
            dfbf['views']['seed'] = seed
    dfbf['synthetic_data']['cache_dir'] = osp.join(args.out, 'cache', task)
    epochs = dfbf['schedule']['epochs']
    dfbf['schedule']['checkpoint_interval'] = epochs  # one checkpoint, at the end
    cfg.dfbf = dfbf
    cfg.work_dir = work_dir
    cfg.experiment_name = f'{task}_{rule}_s{sparsity:g}_{method}_{time.time_ns()}'
    return cfg


def measure_teacher(task, args):
    """The teacher's test metric with the stock Runner (its own config and checkpoint)."""
    from mmengine.runner import Runner
    from tools.benchmarks.train_teacher import load_task_config
    spec = TASKS[task]
    ckpt = osp.join(REPO, spec['teacher'])
    if not osp.isfile(ckpt):
        raise FileNotFoundError(f'no teacher checkpoint {spec["teacher"]}')
    cfg = load_task_config(task, args.data, osp.join(args.out, 'runs', task, 'teacher'))
    cfg.load_from = ckpt
    cfg.experiment_name = f'{task}_teacher_{time.time_ns()}'
    return dict(metric=metric_of(Runner.from_cfg(cfg).test(), task))


def metric_of(metrics, task):
    """The task's metric from an evaluator's dict, scaled to percent / points.

    mmdet's CocoMetric returns an empty dict when the model detects nothing at all (every score
    under the test threshold), as a badly pruned detector does: that is an mAP of 0.
    """
    spec = TASKS[task]
    if not metrics:
        return 0.0
    if spec['metric'] not in metrics:
        raise KeyError(f'{task}: the evaluator gave no {spec["metric"]!r}; got {sorted(metrics)}')
    return float(metrics[spec['metric']]) * spec['scale']


def _profile(rows, prefix):
    return next(r for r in rows if r['metric'].startswith(prefix))


def make_bench_hook():
    from mmengine.hooks import Hook

    class BenchHook(Hook):
        """Wall time of the training epochs (no val/export) and the last val metrics."""
        priority = 'LOWEST'

        def __init__(self):
            self.train_s, self.metrics, self._t = 0.0, None, None

        def before_train_epoch(self, runner):
            self._t = time.perf_counter()

        def after_train_epoch(self, runner):
            self.train_s += time.perf_counter() - self._t

        def after_val_epoch(self, runner, metrics=None):
            self.metrics = dict(metrics or {})

    return BenchHook()


def measure_run(task, rule, sparsity, method, results, args):
    """One pruned + fine-tuned model: metrics before/after, profile and wall times."""
    from mmengine.registry import DATASETS
    from dfbf_mm.engine import DataFreeDistillRunner
    budget = 'quick' if args.quick else 'full'
    work_dir = osp.join(args.out, 'runs', budget, task, f'{rule}_s{sparsity:g}_{method}')
    cfg = task_config(task, args, rule, sparsity, method, work_dir)
    start = time.perf_counter()
    runner = DataFreeDistillRunner.from_cfg(cfg)
    # Runner.train() calls model.init_weights(), which re-initialises the loaded teacher and the
    # pruned student (DataFreeDistiller does not mark them initialised); mark it done here.
    runner.model._is_init = True
    hook = make_bench_hook()
    runner.register_hook(hook)
    # pruned, no fine-tuning: the same for every method of (task, rule, sparsity)
    pkey = f'{budget}|{task}|{rule}|s{sparsity:g}|pruned'
    if pkey not in results:
        results[pkey] = dict(metric=metric_of(runner.val(), task))
    synth_key = cache_id = None
    if METHODS[method]['train_data'] == 'synthetic':
        # synthesise once per task into the shared cache, timed apart from fine-tuning
        dataset = DATASETS.build(copy.deepcopy(runner.cfg.train_dataloader['dataset']))
        t = time.perf_counter()
        done = dataset.prepare(runner.model.teacher, runner.cfg.dfbf_task)
        # one record per cache (teacher + synthesis settings): a changed preset shows up here
        cache_id = osp.basename(dataset.cache.dir)
        synth_key = f'{budget}|{task}|synthesis|{cache_id}'
        if done['generated']:
            d = cfg.dfbf['synthetic_data']
            results[synth_key] = dict(wall_s=time.perf_counter() - t,
                                      batches=done['generated'], num_images=d['num_images'],
                                      batch_size=d['batch_size'],
                                      synthesizer=cfg.dfbf['synthesizer'])
            save_results(results, osp.join(args.out, 'results.json'))  # kept if the run dies
    runner.train()
    metrics = hook.metrics if hook.metrics is not None else runner.val_loop.run()
    metric = metric_of(metrics, task)  # the val at the end of training
    rows = runner.message_hub.get_info('dfbf_profile')
    macs, params = _profile(rows, 'MACs'), _profile(rows, 'params')
    lat = _profile(rows, f'latency ms (batch {LATENCY_BATCH}')
    grid = osp.join(work_dir, 'synthetic_images.png')
    if osp.isfile(grid):
        shutil.copyfile(grid, osp.join(args.out, f'synthetic_images_{task}.png'))
    dfbf = cfg.dfbf
    return dict(
        metric=metric, pruned=results[pkey]['metric'],
        macs=macs['pruned'], macs_teacher=macs['teacher'],
        params=params['pruned'], params_teacher=params['teacher'],
        latency_ms=lat['pruned'], latency_teacher_ms=lat['teacher'],
        finetune_s=hook.train_s, wall_s=time.perf_counter() - start,
        synthesis_s=results.get(synth_key, {}).get('wall_s') if synth_key else None,
        synthetic_cache=cache_id,
        num_images=dfbf['synthetic_data']['num_images'], epochs=dfbf['schedule']['epochs'],
        distill=dfbf.get('distill'), work_dir=work_dir, views=dfbf.get('views'),
        seed=cfg.get('randomness', {}).get('seed'),
        date=datetime.datetime.now().isoformat(timespec='seconds'))


# ----------------------------------------------------------------------------- reporting
def _f(v, fmt='.2f'):
    return '' if v is None else format(v, fmt)


def budget_line(task, budget, results):
    """What the runs of (task, budget) were given, from the recorded runs themselves."""
    runs = [r for k, r in results.items() if k.startswith(f'{budget}|{task}|')
            and 'method' in r]
    if not runs:
        return ''
    r = runs[0]
    synths = sorted((k.split('|')[-1], v) for k, v in results.items()
                    if k.startswith(f'{budget}|{task}|synthesis'))
    synth_txt = '; '.join(
        f'synthesis (cache {cid}) of {v["num_images"]} images ({v["synthesizer"]}): '
        f'{v["wall_s"]:.0f} s once, shared by the data-free runs using it'
        for cid, v in synths) or 'synthesis: not run or reused from an earlier cache'
    return (f'Budget ({budget}): {r["num_images"]} training images × {r["epochs"]} epochs per '
            f'run, same loss for every method (distill {r.get("distill")}); {synth_txt}.')


def report(results, budget='full'):
    """results.md text: per task a summary pivot and the detail table."""
    lines = ['# Offline benchmark: data-free fine-tuning after pruning (digits)', '',
             'Produced by `tools/benchmarks/run.py` (see its docstring); CPU, 1 thread per run '
             'on a shared 2-core machine, so wall times are noisy. Metrics are the stock '
             'evaluators on the test split. MACs / params / latency: the backbone only '
             f'(latency: batch {LATENCY_BATCH}, median of 5). `% teacher` = metric / teacher '
             'metric; `vs real` = metric − the real-data bound of the same setting.', '']
    for task, spec in TASKS.items():
        teacher = results.get(f'{budget}|{task}|teacher')
        runs = {k: r for k, r in results.items()
                if k.startswith(f'{budget}|{task}|') and 'method' in r}
        if teacher is None or not runs:
            continue
        t = teacher['metric']
        lines += [f'## {task}: {spec["label"]}, teacher {t:.2f}', '',
                  budget_line(task, budget, results), '']
        methods = [m for m in METHODS if any(r['method'] == m for r in runs.values())]
        settings = sorted({(r['rule'], r['sparsity']) for r in runs.values()})
        head = ['rule', 'sparsity', 'backbone MACs cut', 'pruned'] + methods
        lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for rule, s in settings:
            cell = {r['method']: r for r in runs.values() if (r['rule'], r['sparsity']) == (rule, s)}
            any_r = next(iter(cell.values()))
            row = [rule, f'{s:g}', f'{100 * (1 - any_r["macs"] / any_r["macs_teacher"]):.1f} %',
                   _f(any_r['pruned'])]
            row += [f'{cell[m]["metric"]:.2f} ({cell[m]["finetune_s"]:.0f} s)' if m in cell
                    else '' for m in methods]
            lines.append('| ' + ' | '.join(row) + ' |')
        lines += ['', 'Cells: metric (fine-tuning wall time).', '']
        head = ['rule', 'sparsity', 'method', spec['label'], '% teacher', 'vs real',
                'params', 'MACs', 'latency ms (teacher)', 'fine-tune s', 'synthesis s (cache)']
        lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for k in sorted(runs, key=lambda k: (runs[k]['rule'], runs[k]['sparsity'],
                                             list(METHODS).index(runs[k]['method']))):
            r = runs[k]
            real = results.get(run_key(budget, task, r['rule'], r['sparsity'], 'real'))
            gap = f'{r["metric"] - real["metric"]:+.2f}' if real and r['method'] != 'real' else ''
            lines.append('| ' + ' | '.join([
                r['rule'], f'{r["sparsity"]:g}', r['method'], f'{r["metric"]:.2f}',
                f'{100 * r["metric"] / t:.1f}', gap,
                f'{r["params"] / 1e3:.1f} k ({100 * r["params"] / r["params_teacher"]:.0f} %)',
                f'{r["macs"] / 1e6:.2f} M ({100 * r["macs"] / r["macs_teacher"]:.0f} %)',
                f'{r["latency_ms"]:.2f} ({r["latency_teacher_ms"]:.2f})',
                f'{r["finetune_s"]:.0f}',
                _f(r.get('synthesis_s'), '.0f') + (f' ({r["synthetic_cache"][:4]})'
                                                  if r.get('synthetic_cache') else '')]) + ' |')
        lines += ['', f'Synthetic images: `synthetic_images_{task}.png`.', '']
    lines += ['![metric vs backbone FLOPs](metric_vs_flops.png)', '']
    return '\n'.join(lines)


def plot(results, path, budget='full'):
    """Metric vs backbone MACs per method, one column per task; the lower row zooms on the
    band just under the teacher, where the fine-tuned methods sit close together."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = [t for t in TASKS if any(k.startswith(f'{budget}|{t}|') and 'method' in r
                                     for k, r in results.items())]
    if not tasks:
        return None
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 8), squeeze=False)
    for col, task in enumerate(tasks):
        runs = [r for k, r in results.items() if k.startswith(f'{budget}|{task}|') and 'method' in r]
        teacher = results.get(f'{budget}|{task}|teacher')
        series = {}
        for r in runs:
            series.setdefault((r['method'], r['rule']), []).append(r)
            series.setdefault(('pruned', r['rule']), [])
        for row, ax in enumerate(axes[:, col]):
            if teacher:
                ax.scatter([runs[0]['macs_teacher'] / 1e6], [teacher['metric']], marker='*',
                           s=150, color='k', label='teacher', zorder=3)
            for (method, rule), rs in sorted(series.items()):
                if method == 'pruned':
                    pts = sorted({(r['macs'], r['pruned']) for r in runs if r['rule'] == rule})
                else:
                    pts = sorted((r['macs'], r['metric']) for r in rs)
                ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts],
                        marker='o' if rule == 'uniform' else 's',
                        linestyle='-' if rule == 'uniform' else '--',
                        color=COLORS.get(method, '0.3'), alpha=0.8,
                        label=(f'{method} ({rule})' if method != 'pruned'
                               else f'pruned, no FT ({rule})'))
            ax.set_xlabel('backbone MACs (M)')
            ax.set_ylabel(TASKS[task]['label'])
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(task)
                ax.legend(fontsize=7)
            elif teacher:
                t = teacher['metric']
                ax.set_ylim(t - 0.06 * t, t + 0.01 * t)
                ax.set_title(f'{task}: zoom on the top 6 % below the teacher')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(results, out, budget):
    md = osp.join(out, 'results.md')
    with open(md, 'w') as f:
        f.write(report(results, budget))
    png = plot(results, osp.join(out, 'metric_vs_flops.png'), budget)
    return md, png


def seeds_report(dirs, budget='full'):
    """Markdown table over the results.json of several --out dirs (one per --seed): per
    (task, rule, sparsity, method) every seed's metric, the mean, % of the teacher and the mean's
    gap to the mean of the `real` rows of the same setting."""
    runs, teachers = {}, {}
    for d in dirs:
        for k, r in load_results(osp.join(d, 'results.json')).items():
            if k == f'{budget}|{k.split("|")[1]}|teacher':
                teachers.setdefault(k.split('|')[1], r['metric'])
            elif 'method' in r and r.get('budget') == budget:
                runs.setdefault((r['task'], r['rule'], r['sparsity'], r['method']), []).append(r)
    mean = lambda rs: sum(r['metric'] for r in rs) / len(rs)  # noqa: E731
    lines = ['| task | rule | sparsity | backbone MACs cut | method | metric (seed) | mean | '
             '% teacher | vs real | fine-tune s |', '|' + '---|' * 10]
    order = list(METHODS)
    for key in sorted(runs, key=lambda k: (list(TASKS).index(k[0]), k[1], k[2], order.index(k[3]))):
        rs = sorted(runs[key], key=lambda r: r.get('seed') or 0)
        task, rule, s, method = key
        real = runs.get((task, rule, s, 'real'))
        t = teachers.get(task)
        lines.append('| ' + ' | '.join([
            task, rule, f'{s:g}', f'{100 * (1 - rs[0]["macs"] / rs[0]["macs_teacher"]):.1f} %', method,
            ', '.join(f'{r["metric"]:.2f} ({r.get("seed") or 0})' for r in rs), f'{mean(rs):.2f}',
            f'{100 * mean(rs) / t:.1f}' if t else '',
            f'{mean(rs) - mean(real):+.2f}' if real and not method.startswith('real') else '',
            ', '.join(f'{r["finetune_s"]:.0f}' for r in rs)]) + ' |')
    return '\n'.join(lines) + '\n'


def ensure_data(root):
    if all(osp.exists(osp.join(root, t)) for t in ('cls', 'det', 'pose')):
        return
    from tools.benchmarks import make_digits
    print(f'[benchmark] generating the digits data into {root}')
    make_digits.build(root, seed=0)


def main(argv=None):
    args = parse_args(argv)
    budget = 'quick' if args.quick else 'full'
    os.makedirs(args.out, exist_ok=True)
    results_path = osp.join(args.out, 'results.json')
    failed = []
    if args.seed_dirs:
        table = seeds_report(args.seed_dirs, budget)
        with open(osp.join(args.out, 'seeds.md'), 'w') as f:
            f.write(table)
        print(table)
        return
    if args.report_only:
        results = load_results(results_path)
    else:
        import dfbf_mm  # noqa: F401  (registers the runner, hooks, datasets)
        ensure_data(args.data)
        results, failed = run_all(
            args, lambda *a: measure_run(*a, args), lambda task: measure_teacher(task, args),
            results_path)
    md, png = write_outputs(results, args.out, budget)
    print(report(results, budget))
    print(f'[benchmark] wrote {md}, {png}, {results_path}')
    if failed:
        raise RuntimeError(f'{len(failed)} run(s) failed: {", ".join(failed)}')


if __name__ == '__main__':
    from dfbf_mm.cli import run_cli
    run_cli(main)
