"""DeepInversion vs the meta-learned generator, side by side on the digits tasks.

    python -m tools.benchmarks.synthesis_methods [--tasks cls det pose] [--methods di gen gen_wall real]
        [--sparsities cls=0.5 det=0.5,0.7 pose=0.5] [--seeds 0] [--out work_dirs/synthesis_methods]
        [--out-md docs/synthesis_methods.md] [--report-only]

Per task: the committed teacher, pruned (uniform L1, each listed sparsity) into the same
student, fine-tuned with the DFBF feature loss under tools/benchmarks/run.py's full budget
(same loss, same number of iterations) on the images of each method:

* ``di``: the task config's DeepInversion synthesizer (the `fast`-based schedules of
  docs/benchmark_results.md);
* ``di_x2`` / ``di_x4`` / ``di_x8``: DeepInversion at 1/k of the steps per image on k x the images (the
  same teacher passes in all, the same fine-tuning iterations); ``di_x4c``: ``di_x4`` compiled
  (``compile=True``: its own cache; ``--num-images`` gives it the images that fit in ``di``'s
  wall time);
* ``gen``: ``GeneratorSynthesizer`` with the task's preset, as many images as ``di``;
* ``gen_norefine`` / ``gen_norefine_wall``: the same without the per-pixel refinement
  (``refine_steps=0``, 10 generator steps per batch: the detection preset before it);
* ``gen_wall``: the generator given ``di``'s synthesis wall time (measured in this run): more
  images, epochs cut so the fine-tuning iterations stay the same;
* ``online`` / ``online_noadv``: ``gen``'s images as the start of a pool that grows while
  fine-tuning (``dfbf.online``, ``--online``: a round of new generator batches every few
  epochs against the current student, with / without the adversarial feature-distance term);
  its teacher / student passes per image and synthesis time are the whole run's (offline
  batches + every round), the fine-tuning iterations the same as ``gen``'s;
* ``real``: the real train split (upper bound), same iterations;
* ``<method>+mix``: the same images fine-tuned on random augmented views with CutMix between
  them (``dfbf.views`` of run.py's ``dfbf+mix``; docs/augmented_views.md); ``<method>+neck``:
  the frozen stock neck's outputs matched too (``dfbf.distill.neck_weight=1``).

Synthesis runs once per (task, method) and is timed in this process; teacher passes per image
come from the cached batches (``SyntheticImageDataset.stats``: whole run, a stream's warm-up
included). Results go to ``--out/results.json`` (a rerun skips finished rows) and one table.
"""
if not __package__:  # it imports its sibling modules through the package
    raise SystemExit('run it from the repository root as: python -m tools.benchmarks.synthesis_methods ARGS')
import argparse
import copy
import json
import os
import os.path as osp
import sys
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

from tools.benchmarks import run as bench

GENERATOR_PRESET = {'cls': 'classification', 'det': 'detection', 'pose': 'pose'}
BASE_METHODS = ('di', 'di_x2', 'di_x4', 'di_x8', 'di_x4c', 'gen', 'gen_wall', 'gen_norefine', 'gen_norefine_wall',
                'online', 'online_noadv', 'real')
# online rows: their offline start is gen's images (the same cache)
ONLINE_START = {'online': 'gen', 'online_noadv': 'gen'}
# the generator as it was before per-pixel refinement (the first detection preset)
NO_REFINE = dict(refine_steps=0, steps=10)
STEP_KEYS = ('iterations', 'half_res_iterations', 'coarse_iterations', 'settle_iters')
# suffixes: run.py's fine-tuning variants on the same images (dfbf+mix, dfbf+neck)
SUFFIXES = {'+mix': 'views + CutMix', '+neck': 'neck loss'}
METHODS = BASE_METHODS + tuple(m + sfx for sfx in SUFFIXES for m in BASE_METHODS)


def base_method(method):
    """The method whose images a row trains on (``gen+mix`` -> ``gen``)."""
    return method.split('+')[0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--tasks', nargs='+', default=list(bench.TASKS), choices=list(bench.TASKS))
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    p.add_argument('--sparsities', nargs='+', default=['cls=0.5', 'det=0.5,0.7', 'pose=0.5'],
                   help='TASK=S[,S...] uniform sparsities per task')
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='fine-tuning seeds')
    p.add_argument('--epochs', type=int, default=None,
                   help="fine-tuning epochs of the task budget (lr steps scaled with it; default: run.py's); "
                        'use its own --out, results are keyed without it')
    p.add_argument('--generator', default='{}', help='JSON overrides of every task\'s generator preset')
    p.add_argument('--deepinversion', default='{}',
                   help="JSON overrides of every task's DeepInversion synthesizer (di, di_x*), "
                        'e.g. {"first_bn_multiplier": 10}; use its own --out')
    p.add_argument('--synthesis-seed', type=int, default=None,
                   help="synthetic_data.seed of every synthesis (default: the task config's); the images "
                        'of another seed are another draw of the same method; use its own --out')
    p.add_argument('--synthesis-batch-size', type=int, default=None,
                   help='images optimised together by DeepInversion (di, di_x*), the fine-tuning '
                        "batches kept at the budget's size (dfbf.synthetic_data.train_batch_size)")
    p.add_argument('--num-images', type=int, default=None,
                   help='images of the di_x* rows (default: the task budget\'s, times k for '
                        "di_xk); the fine-tuning iterations stay the budget's; use its own --out (a cache "
                        'holds batches by index, so a larger count reuses a smaller one\'s first batches)')
    p.add_argument('--online', default='{"interval": 4, "batches": 1, "begin": 4, "adv_weight": 1.0}',
                   help='JSON dfbf.online of the online rows (online_noadv: adv_weight 0)')
    p.add_argument('--finetune', default='{}',
                   help='JSON dfbf overrides of every fine-tuning run (e.g. {"distill": {"bn": "frozen"}}); '
                        'use its own --out, results are keyed without them')
    p.add_argument('--out', default='work_dirs/synthesis_methods')
    p.add_argument('--data', default='data/digits')
    p.add_argument('--out-md', default=None)
    p.add_argument('--report-only', action='store_true', help='only print the table of results.json')
    p.add_argument('--quick', action='store_true', help=argparse.SUPPRESS)  # run.task_config reads it
    args = p.parse_args(argv)
    args.sparsity = {}
    for item in args.sparsities:
        task, _, values = item.partition('=')
        if task not in bench.TASKS or not values:
            p.error(f'--sparsities: {item!r} is not TASK=S[,S...] with TASK in {", ".join(bench.TASKS)}')
        args.sparsity[task] = [float(v) for v in values.split(',')]
    args.generator = json.loads(args.generator)
    args.online = json.loads(args.online)
    args.deepinversion = json.loads(args.deepinversion)
    args.finetune = json.loads(args.finetune)
    return args


def base_config(task, args, sparsity, method, work_dir):
    kind = 'real' if base_method(method) == 'real' else 'dfbf'
    cfg = bench.task_config(task, args, 'uniform', sparsity, kind + method[len(base_method(method)):],
                            work_dir)
    if args.synthesis_seed is not None and kind == 'dfbf':  # synthesis and fine-tuning read one draw
        cfg.dfbf['synthetic_data']['seed'] = args.synthesis_seed
    return cfg


def set_synthesis_batch(cfg, args, method):
    """--synthesis-batch-size on a DeepInversion method; the fine-tuning batches stay the budget's."""
    data = cfg.dfbf['synthetic_data']
    if args.synthesis_batch_size and method.startswith('di'):
        data.update(train_batch_size=data['batch_size'], batch_size=args.synthesis_batch_size)


def synthesis(task, method, args, results, log):
    """Synthesise (or reuse) the method's images; returns its record (cache dir, images, time)."""
    import torch
    from mmengine.registry import DATASETS
    from dfbf_mm.engine import DataFreeDistillRunner
    key = f'{task}|synthesis|{method}'
    if key in results:
        return results[key]
    if method in ONLINE_START:  # the offline start; the rounds are timed while fine-tuning
        return synthesis(task, ONLINE_START[method], args, results, log)
    cfg = base_config(task, args, 0.5, 'dfbf', osp.join(args.out, 'runs', task, f'synth_{method}'))
    data = cfg.dfbf['synthetic_data']
    data['cache_dir'] = osp.join(args.out, 'cache', task)
    if method.startswith('di'):
        cfg.dfbf['synthesizer'].update(args.deepinversion)
    set_synthesis_batch(cfg, args, method)
    if method.startswith('di_x'):  # the same teacher passes in all, spread over k x the images
        from dfbf_mm.registry import SYNTHESIZERS
        k = int(method[len('di_x'):].rstrip('c'))
        di = cfg.dfbf['synthesizer']
        settings = SYNTHESIZERS.build(copy.deepcopy(di)).settings
        cfg.dfbf['synthesizer'] = dict(di, **{key: settings[key] // k for key in STEP_KEYS},
                                       **(dict(compile=True) if method.endswith('c') else {}))
        data['num_images'] = args.num_images or data['num_images'] * k
    elif method != 'di':
        over = dict(args.generator, **(NO_REFINE if method.startswith('gen_norefine') else {}))
        cfg.dfbf['synthesizer'] = dict(type='GeneratorSynthesizer', preset=GENERATOR_PRESET[task],
                                       **over)
        if method.endswith('_wall'):
            di, gen = results[f'{task}|synthesis|di'], results[f'{task}|synthesis|{method[:-len("_wall")]}']
            # as many batches as fit in di's wall time at gen's seconds per batch
            batches = max(1, int(di['wall_s'] / (gen['wall_s'] / gen['batches'])))
            data['num_images'] = batches * data['batch_size']
    cfg.dfbf['export'] = dict(profile=False)
    runner = DataFreeDistillRunner.from_cfg(cfg)
    dataset = DATASETS.build(copy.deepcopy(runner.cfg.train_dataloader['dataset']))
    torch.manual_seed(0)
    t = time.perf_counter()
    done = dataset.prepare(runner.model.teacher, runner.cfg.dfbf_task)
    wall = time.perf_counter() - t
    if not done['generated']:
        wall = dataset.stats['seconds']  # all cached: the time recorded when the batches were made
    record = dict(wall_s=wall, batches=dataset.num_batches, num_images=data['num_images'],
                  batch_size=dataset.batch_size, cache=osp.basename(dataset.cache.dir),
                  synthesizer=cfg.dfbf['synthesizer'], **{k: dataset.stats[k] for k in
                                                         ('teacher_passes_per_image', 'student_passes_per_image')})
    seconds = sorted(b.get('seconds', 0.0) for b in dataset.batch_stats[1:])
    if dataset.batch_stats:  # the first batch carries a compile (di_x4c); the median one does not
        record.update(first_batch_s=dataset.batch_stats[0].get('seconds', 0.0),
                      median_batch_s=seconds[len(seconds) // 2] if seconds else None)
    log(f'[synthesis] {task} {method}: {record}')
    results[key] = record
    return record


def finetune(task, method, sparsity, seed, args, results, log):
    """The pruned student fine-tuned on the method's data; its test metric and times."""
    from dfbf_mm.engine import DataFreeDistillRunner
    key = f'{task}|s{sparsity:g}|{method}|seed{seed}'
    if key in results:
        return results[key]
    work_dir = osp.join(args.out, 'runs', task, f's{sparsity:g}_{method}_seed{seed}')
    cfg = base_config(task, args, sparsity, method, work_dir)
    budget = cfg.dfbf['synthetic_data']['num_images'] * cfg.dfbf['schedule']['epochs']
    # the batches its images were made in (an online row's: its offline start's)
    set_synthesis_batch(cfg, args, ONLINE_START.get(base_method(method), base_method(method)))
    if base_method(method) != 'real':
        synth = results[f'{task}|synthesis|{ONLINE_START.get(base_method(method), base_method(method))}']
        cfg.dfbf['synthesizer'] = synth['synthesizer']
        cfg.dfbf['synthetic_data'].update(num_images=synth['num_images'],
                                          cache_dir=osp.join(args.out, 'cache', task))
        # same fine-tuning iterations: epochs x images held at the budget's
        epochs = max(1, round(budget / synth['num_images']))
        sched = cfg.dfbf['schedule']
        scale = epochs / sched['epochs']
        sched.update(epochs=epochs, checkpoint_interval=epochs,
                     lr_steps=[max(1, round(s * scale)) for s in sched.get('lr_steps', [])])
    if base_method(method) in ONLINE_START:
        cfg.dfbf['online'] = dict(args.online, **(dict(adv_weight=0.0) if base_method(method).endswith('_noadv') else {}))
    over = dict(args.finetune)
    if 'custom_hooks' in over:  # stock hooks (e.g. EMAHook) run while fine-tuning
        cfg.custom_hooks = over.pop('custom_hooks')
        over['keep_custom_hooks'] = True
    cfg.dfbf = bench.merge(cfg.dfbf, over)
    cfg.dfbf['export'] = dict(profile=False)
    cfg.randomness = dict(seed=seed)
    if cfg.dfbf.get('views'):
        cfg.dfbf['views']['seed'] = seed
    runner = DataFreeDistillRunner.from_cfg(cfg)
    runner.model._is_init = True  # see run.measure_run
    hook = bench.make_bench_hook()
    runner.register_hook(hook)
    pruned = bench.metric_of(runner.val(), task)
    runner.train()
    metrics = hook.metrics if hook.metrics is not None else runner.val_loop.run()
    record = dict(metric=bench.metric_of(metrics, task), pruned=pruned, finetune_s=hook.train_s,
                  epochs=cfg.dfbf['schedule']['epochs'])
    online = [h for h in runner.hooks if type(h).__name__ == 'OnlineSynthesisHook']
    if online:  # the whole run's synthesis: the offline start and every round
        stats = online[0].pool.stats()
        record['synthesis'] = dict(
            num_images=stats['images'], wall_s=synth['wall_s'] + stats['online_seconds'],
            online=cfg.dfbf['online'],
            **{k: stats[k] for k in ('teacher_passes_per_image', 'student_passes_per_image')})
    log(f'[finetune] {key}: {record}')
    results[key] = record
    return record


def table(results, args):
    lines = ['| task | sparsity | method | images | teacher passes / image | student passes / image | '
             'synthesis s | metric (seeds) | mean | % teacher | vs real |', '|' + '---|' * 11]
    names = dict(di='DeepInversion (task config, `fast`-based)',
                 di_x2='DeepInversion, 1/2 the steps on 2x the images',
                 di_x4='DeepInversion, 1/4 the steps on 4x the images',
                 di_x8='DeepInversion, 1/8 the steps on 8x the images',
                 di_x4c='DeepInversion, 1/4 the steps per image, compiled (`compile=True`)', gen='generator, same images',
                 gen_wall='generator, DeepInversion\'s wall time', real='real data (bound)',
                 gen_norefine='generator without refinement, same images',
                 gen_norefine_wall='generator without refinement, DeepInversion\'s wall time',
                 online='online: generator pool grown while fine-tuning, adversarial term',
                 online_noadv='online: generator pool grown while fine-tuning, no adversarial term')
    names.update({m + sfx: f'{names[m]}, {what}' for sfx, what in SUFFIXES.items() for m in BASE_METHODS})
    for task in args.tasks:
        teacher = results.get(f'{task}|teacher', {}).get('metric')
        for s in args.sparsity.get(task, []):
            real = [results[k]['metric'] for k in results if k.startswith(f'{task}|s{s:g}|real|')]  # plain views
            real_mean = sum(real) / len(real) if real else None
            for m in args.methods:
                runs = [results[f'{task}|s{s:g}|{m}|seed{seed}'] for seed in args.seeds
                        if f'{task}|s{s:g}|{m}|seed{seed}' in results]
                if not runs:
                    continue
                mean = sum(r['metric'] for r in runs) / len(runs)
                synth = results.get(f'{task}|synthesis|{base_method(m)}', {})
                if 'synthesis' in runs[0]:  # online: the rows' own synthesis (mean over seeds)
                    synth = {k: sum(r['synthesis'][k] for r in runs) / len(runs) for k in
                             ('teacher_passes_per_image', 'student_passes_per_image', 'wall_s')}
                    synth['num_images'] = runs[0]['synthesis']['num_images']
                lines.append('| ' + ' | '.join([
                    task, f'{s:g}', names[m], str(synth.get('num_images', '')),
                    f"{synth['teacher_passes_per_image']:.1f}" if synth else '',
                    f"{synth.get('student_passes_per_image', 0):.1f}" if synth else '',
                    f"{synth['wall_s']:.0f}" if synth else '',
                    ', '.join(f"{r['metric']:.2f}" for r in runs), f'{mean:.2f}',
                    f'{100 * mean / teacher:.1f}' if teacher else '',
                    f'{mean - real_mean:+.2f}' if real_mean is not None and base_method(m) != 'real' else '']) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    import dfbf_mm  # noqa: F401
    bench.ensure_data(args.data)
    os.makedirs(args.out, exist_ok=True)
    path = osp.join(args.out, 'results.json')
    results = bench.load_results(path)

    def log(msg):
        print(msg, flush=True)

    for task in [] if args.report_only else args.tasks:
        if f'{task}|teacher' not in results:
            results[f'{task}|teacher'] = bench.measure_teacher(task, args)
            bench.save_results(results, path)
        for m in args.methods:
            if base_method(m) != 'real':
                if base_method(m).endswith('_wall'):
                    for need in ('di', base_method(m)[:-len('_wall')]):
                        synthesis(task, need, args, results, log)
                synthesis(task, base_method(m), args, results, log)
                bench.save_results(results, path)
            for s in args.sparsity.get(task, []):
                for seed in args.seeds:
                    finetune(task, m, s, seed, args, results, log)
                    bench.save_results(results, path)
    text = table(results, args)
    print(text)
    if args.out_md:
        with open(args.out_md, 'w') as f:
            f.write(f'Produced by `python -m tools.benchmarks.synthesis_methods '
                    f'{" ".join(argv if argv is not None else sys.argv[1:])}`.\n\n{text}\n')
    return results


if __name__ == '__main__':
    from dfbf_mm.cli import run_cli
    run_cli(main)
