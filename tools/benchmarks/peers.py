"""Side by side with the peers on the digits classifier (docs/peers.md).

    python -m tools.benchmarks.peers [--sparsity 0.7] [--seeds 0 1] [--methods ...] [--quick]
        [--out work_dirs/peers] [--data data/digits] [--doc docs/peers.md] [--report-only]

One teacher (checkpoints/digits_cls_teacher.pth), one test split, one pruned student: the
benchmark's ``uniform`` L1 row at ``--sparsity`` (tools/benchmarks/run.py), and per method:

* ``dfbf`` / ``real``: our DFBF on DeepInversion images and the real-data bound, run by
  ``tools.benchmarks.run`` itself (its ``measure_run``; the synthetic cache is shared by seeds);
* ``dafl`` / ``dfad`` / ``zskt`` (``:pruned`` and ``:scratch``): mmrazor 1.0.0's data-free
  distillation through its own code and shipped configs (tools/benchmarks/peers_mmrazor.py, one
  process under the pytorch launcher, gloo), the pruned student as its student, initialised
  from the pruned weights or re-initialised; stopped once it has spent our ``dfbf`` row's wall
  time (synthesis + fine-tuning), its schedule laid out for the iterations that spend our row's
  teacher forward passes (``--mmrazor-budget passes``: that whole schedule, no time limit);
* ``tp-l1+dfbf`` / ``tp-l1+real``: Torch-Pruning's own L1 (``MagnitudeImportance(p=1)`` +
  ``MagnitudePruner``, every prunable group, residual channels included) of the same model to
  the same backbone MACs cut, fine-tuned with our schedule on our synthetic images (logit KD
  from the teacher) or on the real train split (cross-entropy, its normal use).

mmrazor needs the torch 2.1 stack (``DFBF_STACK=torch2.1 bash tools/setup_env.sh`` then
``pip install --no-deps mmrazor==1.0.0``); its rows are skipped with the reason elsewhere.
Results: ``--out/results.json`` (a rerun skips finished rows) and the table in ``--doc``.
"""
if not __package__:
    raise SystemExit('run it from the repository root as: python -m tools.benchmarks.peers ARGS')
import argparse
import copy
import datetime
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import time

from tools.benchmarks import run

REPO = run.REPO
MMRAZOR = ['dafl', 'dfad', 'zskt']
METHODS = (['dfbf', 'real'] + [f'{m}:{i}' for i in ('pruned', 'scratch') for m in MMRAZOR]
           + ['tp-l1+dfbf', 'tp-l1+real'])
# mmrazor rows of the other budget (--mmrazor-budget passes): keyed and labelled apart
ROWS = METHODS[:8] + [f'{m}@passes' for m in METHODS[2:8]] + METHODS[8:]
KD_T = 4.0  # temperature of the logit KD of the tp-l1+dfbf row (Hinton et al.)
NOTES = '<!-- notes: kept by the command -->'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sparsity', type=float, default=0.7,
                   help='the uniform L1 sparsity of the benchmark row whose student and MACs cut are used')
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--mmrazor-seeds', type=int, nargs='+', default=[0],
                   help='the seeds (of --seeds) the mmrazor rows run for')
    p.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS)
    p.add_argument('--mmrazor-budget', default='wall', choices=['wall', 'passes'],
                   help="the mmrazor rows' budget: our dfbf row's wall time (default), or its "
                        'teacher forward passes (the whole schedule; rows kept apart, `@passes`)')
    p.add_argument('--quick', action='store_true', help="smoke-test budget (run.py's quick budget)")
    p.add_argument('--out', default='work_dirs/peers')
    p.add_argument('--data', default='data/digits')
    p.add_argument('--doc', default=None,
                   help='the report (default: docs/peers.md; with --quick: --out/peers.md only)')
    p.add_argument('--report-only', action='store_true')
    args = p.parse_args(argv)
    if not 0 < args.sparsity < 1:
        p.error(f'--sparsity: {args.sparsity} is not in (0, 1)')
    return args


# ----------------------------------------------------------------------------- model helpers
def evaluate(model, loader_cfg: dict) -> float:
    """Top-1 (%) of an mmpretrain classifier on the dataloader of ``loader_cfg`` (the stock
    Accuracy's top-1: argmax of the scores against gt_label)."""
    import torch
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        loader = Runner.build_dataloader(copy.deepcopy(loader_cfg))
    was_training = model.training
    model.eval()
    right = total = 0
    with torch.no_grad():
        for data in loader:
            data = model.data_preprocessor(data, False)
            for s in model(**data, mode='predict'):
                right += int(s.pred_label.item() == s.gt_label.item())
                total += 1
    model.train(was_training)
    return 100.0 * right / total


def reinitialise(model) -> None:
    """Fresh weights for every layer that has them; the model's ``init_weights`` (run by the
    Runner) applies its own init_cfg on top, as for a model built with pretrained=False."""
    for m in model.modules():
        if hasattr(m, 'reset_parameters'):
            m.reset_parameters()
    for m in model.modules():
        if hasattr(m, '_is_init'):
            m._is_init = False


def backbone_macs(model) -> int:
    import torch
    from dfbf_mm.cost import count_macs_params
    return count_macs_params(model.backbone, torch.randn(1, 3, 32, 32))[0]


def tp_l1_prune(teacher, macs_target: int, tol: float = 0.005):
    """Torch-Pruning's L1 (``MagnitudeImportance(p=1)``, ``MagnitudePruner``, one ratio for every
    prunable group) of a copy of ``teacher``, the ratio bisected until the backbone's MACs are
    within ``tol`` (fraction of the teacher's) of ``macs_target``; returns (model, ratio)."""
    import torch
    import torch_pruning as tp
    example = torch.randn(1, 3, 32, 32)
    full = backbone_macs(teacher)

    def prune(ratio):
        model = copy.deepcopy(teacher).eval().requires_grad_(True)  # TP skips frozen layers
        pruner = tp.pruner.MagnitudePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio, ignored_layers=[model.head.fc])
        pruner.step()
        return model

    lo, hi = 0.0, 0.95
    best = None
    for _ in range(20):
        mid = (lo + hi) / 2
        model = prune(mid)
        macs = backbone_macs(model)
        if best is None or abs(macs - macs_target) < abs(best[2] - macs_target):
            best = (model, mid, macs)
        if abs(macs - macs_target) <= tol * full:
            break
        lo, hi = (mid, hi) if macs > macs_target else (lo, mid)
    return best[0], best[1]


def finetune(student, schedule: dict, batches, loss_fn, seed: int) -> float:
    """Our fine-tuning schedule (SGD, lr steps at epochs) over ``batches(epoch)``; returns seconds."""
    import torch
    torch.manual_seed(seed)
    opt = torch.optim.SGD(student.parameters(), lr=schedule['lr'], momentum=schedule['momentum'],
                          weight_decay=schedule['weight_decay'])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(schedule['lr_steps']))
    student.train()
    start = time.perf_counter()
    for epoch in range(schedule['epochs']):
        for batch in batches(epoch):
            loss = loss_fn(student, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return time.perf_counter() - start


def kd_loss(teacher):
    import torch.nn.functional as F

    def loss(student, images):
        t = teacher(images, mode='tensor').detach()
        s = student(images, mode='tensor')
        return F.kl_div(F.log_softmax(s / KD_T, 1), F.softmax(t / KD_T, 1),
                        reduction='batchmean') * KD_T ** 2
    return loss


def ce_loss(student, data):
    data = student.data_preprocessor(data, True)
    return sum(v for k, v in student(**data, mode='loss').items() if k.startswith('loss'))


# ----------------------------------------------------------------------------- the runs
def seed_args(args, seed):
    """run.py's arguments for one seed: its own --out, the synthesis cache shared."""
    out = osp.join(args.out, f'seed{seed}')
    os.makedirs(out, exist_ok=True)
    shared, link = osp.abspath(osp.join(args.out, 'cache')), osp.join(out, 'cache')
    os.makedirs(shared, exist_ok=True)
    if not osp.lexists(link):
        os.symlink(shared, link)
    return run.parse_args(['--tasks', 'cls', '--sparsities', f'{args.sparsity:g}', '--rules', 'uniform',
                           '--methods', 'dfbf', 'real', '--seed', str(seed), '--out', out,
                           '--data', args.data] + (['--quick'] if args.quick else []))


def ours(args, seed, methods):
    """Our rows through run.py (teacher, pruned, dfbf, real); returns run.py's results."""
    rargs = seed_args(args, seed)
    rargs.methods = [m for m in ('dfbf', 'real') if m in methods]
    results, failed = run.run_all(rargs, lambda *a: run.measure_run(*a, rargs),
                                  lambda task: run.measure_teacher(task, rargs),
                                  osp.join(rargs.out, 'results.json'))
    if failed:
        raise RuntimeError(f'run.py failed: {failed}')
    return results


def setting(args):
    """The teacher, the pruned student (not fine-tuned), the synthetic dataset (from the cache
    our dfbf row made) with its passes per image, the schedule and the test loader config."""
    from mmengine.registry import DATASETS
    from dfbf_mm.engine import DataFreeDistillRunner
    rargs = seed_args(args, args.seeds[0])
    cfg = run.task_config('cls', rargs, 'uniform', args.sparsity, 'dfbf',
                          osp.join(args.out, 'setting'))
    runner = DataFreeDistillRunner.from_cfg(cfg)
    dataset = DATASETS.build(copy.deepcopy(runner.cfg.train_dataloader['dataset']))
    done = dataset.prepare(runner.model.teacher, runner.cfg.dfbf_task, progress=False)
    return dict(teacher=runner.model.teacher.eval(), student=runner.model.student,
                dataset=dataset, generated=done['generated'], dfbf=cfg.dfbf)


def tp_rows(args, seed, s, methods):
    """The Torch-Pruning rows of one seed: prune once, fine-tune on synthetic and real data."""
    import torch
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from tools.benchmarks.train_teacher import load_task_config
    t = time.perf_counter()
    pruned, ratio = tp_l1_prune(s['teacher'], backbone_macs(s['student']))
    prune_s = time.perf_counter() - t
    sched = dict(s['dfbf']['schedule'])
    sched.setdefault('momentum', 0.9)
    sched.setdefault('weight_decay', 5e-4)
    bs = s['dfbf']['synthetic_data']['batch_size']
    test = run_test_cfg(args)
    rows = {}
    if 'tp-l1+dfbf' in methods:
        student = copy.deepcopy(pruned)
        ds = s['dataset']

        def synth(epoch):
            g = torch.Generator().manual_seed(seed * 1000 + epoch)
            order = torch.randperm(len(ds), generator=g)
            for i in range(0, len(ds), bs):
                yield torch.stack([ds[int(j)]['inputs'] for j in order[i:i + bs]])
        sec = finetune(student, sched, synth, kd_loss(s['teacher']), seed)
        rows['tp-l1+dfbf'] = dict(metric=evaluate(student, test), finetune_s=sec, prune_s=prune_s,
                                  ratio=ratio, macs=backbone_macs(student), synthetic=True)
    if 'tp-l1+real' in methods:
        student = copy.deepcopy(pruned)
        tcfg = load_task_config('cls', args.data)
        loader = tcfg.train_dataloader.to_dict()
        loader.update(batch_size=bs)  # the real subset of our `real` row: as many images as ours
        loader['dataset']['indices'] = len(s['dataset'])
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            loader = Runner.build_dataloader(loader)
        sec = finetune(student, sched, lambda epoch: iter(loader), ce_loss, seed)
        rows['tp-l1+real'] = dict(metric=evaluate(student, test), finetune_s=sec, prune_s=prune_s,
                                  ratio=ratio, macs=backbone_macs(student), synthetic=False)
    return rows


def run_test_cfg(args):
    from tools.benchmarks.train_teacher import load_task_config
    return load_task_config('cls', args.data).test_dataloader.to_dict()


def mmrazor_row(args, method, init, seed, student_path, passes, seconds):
    """One mmrazor run in its own process under the pytorch launcher; returns its record."""
    from tools.benchmarks.peers_mmrazor import mmrazor_config, teacher_passes_per_iter
    cfg = mmrazor_config(method)
    batch = cfg['train_dataloader']['batch_size']
    per_iter = teacher_passes_per_iter(method, batch, cfg['model'].get('student_iter', 1))
    iters = max(4, round(passes / per_iter))  # 4: room for a warm-up and the milestones after it
    wd = osp.join(args.out, f'seed{seed}', f'{method}_{init}' + ('' if seconds else '_passes'))
    os.makedirs(wd, exist_ok=True)
    result = osp.join(wd, 'result.json')
    port = 29500 + (os.getpid() + seed * 7 + MMRAZOR.index(method)) % 1000
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1',
           '--master_port', str(port), '-m', 'tools.benchmarks.peers_mmrazor',
           '--method', method, '--init', init, '--student', student_path, '--iters', str(iters),
           '--seed', str(seed), '--data', args.data, '--work-dir', wd, '--result', result,
           ] + (['--max-seconds', f'{seconds:.1f}'] if seconds else [])
    with open(osp.join(wd, 'log.txt'), 'w') as log:
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0 or not osp.isfile(result):
        raise RuntimeError(f'{method}:{init}: the mmrazor run failed (exit {rc}); see {wd}/log.txt')
    with open(result) as f:
        return json.load(f)


def mmrazor_available() -> str:
    """'' when mmrazor's models import here, else the reason."""
    try:
        from tools.benchmarks.peers_mmrazor import patch_torch_ao_names
        patch_torch_ao_names()
        import mmrazor.models  # noqa: F401
    except Exception as e:  # noqa: BLE001  (any import failure is the reason to report)
        return f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    return ''


def collect(args):
    """Every (seed, method) row not yet in results.json."""
    import torch
    results = run.load_results(osp.join(args.out, 'results.json'))
    path = osp.join(args.out, 'results.json')
    budget = 'quick' if args.quick else 'full'

    def save(key, record):
        record.update(date=datetime.datetime.now().isoformat(timespec='seconds'))
        results[key] = record
        run.save_results(results, path)

    cmds = results.setdefault(f'{budget}|commands', dict(list=[]))['list']
    if command() not in cmds:
        cmds.append(command())
    results[f'{budget}|machine'] = machine()
    s = None
    for seed in args.seeds:
        r = ours(args, seed, args.methods + ['dfbf'])  # dfbf makes the synthetic cache
        base = f'{budget}|cls|uniform|s{args.sparsity:g}'
        results[f'{budget}|teacher'] = r[f'{budget}|cls|teacher']
        results[f'{budget}|pruned'] = r[f'{base}|pruned']
        for m in ('dfbf', 'real'):
            if f'{base}|{m}' in r:
                save(f'{budget}|{seed}|{m}', dict(r[f'{base}|{m}']))
        if s is None:
            s = setting(args)
            st = s['dataset'].stats
            synth = [v for k, v in r.items() if k.startswith(f'{budget}|cls|synthesis|')]
            results[f'{budget}|synthesis'] = dict(
                passes_per_image=st['teacher_passes_per_image'], images=len(s['dataset']),
                wall_s=synth[0]['wall_s'] if synth else st.get('seconds'),
                epochs=s['dfbf']['schedule']['epochs'])
            student_path = osp.abspath(osp.join(args.out, 'pruned_student.pth'))
            torch.save(s['student'].requires_grad_(True), student_path)
        syn = results[f'{budget}|synthesis']
        passes = syn['images'] * (syn['passes_per_image'] + syn['epochs'])
        seconds = numbers('dfbf', results[f'{budget}|{args.seeds[0]}|dfbf'], results, budget)[2]
        todo = [m for m in args.methods if m.startswith('tp-') and f'{budget}|{seed}|{m}' not in results]
        if todo:
            for m, rec in tp_rows(args, seed, s, todo).items():
                save(f'{budget}|{seed}|{m}', rec)
        tag = '' if args.mmrazor_budget == 'wall' else '@passes'
        razor = [m for m in args.methods if m.split(':')[0] in MMRAZOR and seed in args.mmrazor_seeds
                 and f'{budget}|{seed}|{m}{tag}' not in results]
        why = mmrazor_available() if razor else ''
        for m in razor:
            if why:
                print(f'[peers] {m}: skipped, mmrazor does not import here ({why})')
                continue
            method, init = m.split(':')
            print(f'[peers] seed {seed} {m}: running')
            try:
                save(f'{budget}|{seed}|{m}{tag}', mmrazor_row(args, method, init, seed, student_path,
                                                            passes, seconds if not tag else None))
            except RuntimeError as e:
                print(f'[peers] {e}')
        write_doc(args, results)
    return results


# ----------------------------------------------------------------------------- the table
def rows_of(results, budget):
    """(method, [records by seed]) in ROWS order."""
    out = []
    for m in ROWS:
        recs = sorted(((int(k.split('|')[1]), v) for k, v in results.items()
                       if k.startswith(f'{budget}|') and k.split('|')[-1] == m and len(k.split('|')) == 3),
                      key=lambda x: x[0])
        if recs:
            out.append((m, recs))
    return out


LABELS = {
    'dfbf': 'ours: DFBF (L1 inner channels + DeepInversion `fast` images + feature distillation)',
    'real': 'real-data bound (our pruned model, same loss, real train split)',
    'dafl:pruned': 'mmrazor DAFL, pruned student', 'dfad:pruned': 'mmrazor DFAD, pruned student',
    'zskt:pruned': 'mmrazor ZSKT, pruned student',
    'dafl:scratch': 'mmrazor DAFL, student from scratch',
    'dfad:scratch': 'mmrazor DFAD, student from scratch',
    'zskt:scratch': 'mmrazor ZSKT, student from scratch',
    'tp-l1+dfbf': 'Torch-Pruning L1 (all groups) + KD on our synthetic images',
    'tp-l1+real': 'Torch-Pruning L1 (all groups) + fine-tuning on real data',
}


def label(m):
    if m.endswith('@passes'):
        return LABELS[m[:-len('@passes')]] + ', our teacher passes (whole schedule)'
    return LABELS[m]


def numbers(m, rec, results, budget):
    """(teacher passes per image, total teacher passes, wall s) of one record."""
    syn = results.get(f'{budget}|synthesis') or {}
    ppi, imgs = syn.get('passes_per_image', 0), syn.get('images', 0)
    if m == 'dfbf' or m == 'tp-l1+dfbf':
        per = ppi + syn.get('epochs', 0)
        wall = syn.get('wall_s', 0) + rec['finetune_s'] + rec.get('prune_s', 0)
        return per, per * imgs, wall
    if m in ('real', 'tp-l1+real'):
        return 0.0, 0, rec['finetune_s'] + rec.get('prune_s', 0)
    return rec['teacher_passes'] / rec['images'], rec['teacher_passes'], rec['wall_s']


def table(results, budget):
    teacher = (results.get(f'{budget}|teacher') or {}).get('metric')
    rows = rows_of(results, budget)
    real = dict(rows).get('real')
    real_mean = sum(r['metric'] for _, r in real) / len(real) if real else None
    ours_rec = (dict(rows).get('dfbf') or [(0, {})])[0][1]
    full, ours_macs = ours_rec.get('macs_teacher'), ours_rec.get('macs')
    lines = ['| method | backbone MACs cut | top-1 (%) per seed | mean | % of teacher | '
             'teacher passes per image | teacher passes in all | wall s (one run) | vs real |',
             '|' + '---|' * 9]
    means = {}
    for m, recs in rows:
        vals = [r['metric'] for _, r in recs]
        mean = sum(vals) / len(vals)
        means[m] = mean
        per, total, wall = numbers(m, recs[0][1], results, budget)
        macs = recs[0][1].get('macs', ours_macs)
        lines.append('| ' + ' | '.join([
            label(m), f'{100 * (1 - macs / full):.1f} %' if full and macs else '',
            ', '.join(f'{v:.2f} ({sd})' for v, (sd, _) in zip(vals, recs)), f'{mean:.2f}',
            f'{100 * mean / teacher:.1f}' if teacher else '', f'{per:.1f}', f'{round(total):,}',
            f'{wall:.0f}',
            f'{mean - real_mean:+.2f}' if real_mean is not None and m != 'real' else '']) + ' |')
    return '\n'.join(lines), means, teacher


def beats(means):
    """Lines naming every peer whose mean top-1 is above ours (dfbf)."""
    ours_m = means.get('dfbf')
    if ours_m is None:
        return []
    out = [f'- {label(m)}: {v:.2f} against our {ours_m:.2f} ({v - ours_m:+.2f}).'
           for m, v in means.items() if m not in ('dfbf', 'real') and v > ours_m]
    return out or [f'- No peer row is above ours ({ours_m:.2f}) at this budget.']


def machine() -> dict:
    import torch
    cpu = ''
    if osp.isfile('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), '')
    return dict(cpu=cpu or platform.machine(), cores=os.cpu_count(), torch=torch.__version__,
                python=platform.python_version())


def command() -> str:
    return ' '.join(['python -m tools.benchmarks.peers'] + sys.argv[1:])


def write_doc(args, results):
    budget = 'quick' if args.quick else 'full'
    tab, means, teacher = table(results, budget)
    pruned = (results.get(f'{budget}|pruned') or {}).get('metric')
    cmds = (results.get(f'{budget}|commands') or {}).get('list') or [command()]
    env = results.get(f'{budget}|machine') or machine()
    head = [
        '# Side by side with the peers: mmrazor and Torch-Pruning (digits classifier)', '',
        'Produced by these commands of tools/benchmarks/peers.py (in this order; all add rows to one '
        f'`results.json`, budget `{budget}`), this page by the last: '
        + '; '.join(f'`{c}`' for c in cmds + ([command()] if command() not in cmds else [])) + '. '
        f'{datetime.date.today().isoformat()}; the runs on {env["cpu"]}, {env["cores"]} cores '
        f'(shared with other jobs, so wall times are noisy; one thread per process), torch '
        f'{env["torch"]}, python {env["python"]}.', '',
        f'Teacher: `checkpoints/digits_cls_teacher.pth`, top-1 {teacher:.2f} on the test split '
        f'(360 images). Student: our uniform L1 row at sparsity {args.sparsity:g} '
        f'(tools/benchmarks/run.py), {pruned:.2f} before fine-tuning.'
        if teacher is not None and pruned is not None else '',
        '',
        '**Matched budget: wall time.** Each mmrazor run stops after the iteration that spends '
        'the wall time of our `dfbf` row (synthesis + fine-tuning, seed 0); its lr schedule is '
        "mmrazor's, scaled to the iterations that would spend our row's teacher passes (synthesis "
        'passes + one teacher forward per image per fine-tuning epoch). The passes each row spent '
        'are in their own columns (mmrazor: one pass per generated image, DAFL two). '
        'Torch-Pruning rows: our fine-tuning schedule (epochs, lr, steps, batch), on our '
        'synthetic images (so they share our synthesis cost) or the real train split. '
        'Real-data rows use no teacher passes. Cells: top-1 (seed).'
        + (' Rows marked "our teacher passes (whole schedule)" ran mmrazor\'s schedule to the end '
           "of the iterations that spend our row's teacher passes, with no wall-time limit "
           '(`--mmrazor-budget passes`).' if any(k.endswith('@passes') for k in results) else ''), '',
        tab, '',
        '**Where a peer is above ours** (mean top-1; computed from the table):', '',
        *beats(means), '',
        'The peers cannot run on the digits detector or pose model: mmrazor\'s data-free '
        'algorithms (DAFL, DFAD, ZSKT) are classification-only (their losses and generator '
        'targets are class logits), and mmrazor ships no data-free detection or pose config.', '']
    text = '\n'.join(head)
    with open(osp.join(args.out, 'peers.md'), 'w') as f:
        f.write(text)
    print(text)
    path = args.doc or (None if args.quick else osp.join(REPO, 'docs', 'peers.md'))
    if path is None:
        return None
    notes = ''
    if osp.isfile(path):
        with open(path) as f:
            old = f.read()
        if NOTES in old:
            notes = old[old.index(NOTES):]
    with open(path, 'w') as f:
        f.write(text + '\n' + (notes or NOTES + '\n'))
    return path


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.report_only:
        write_doc(args, run.load_results(osp.join(args.out, 'results.json')))
        return
    import dfbf_mm  # noqa: F401
    run.ensure_data(args.data)
    collect(args)


if __name__ == '__main__':
    from dfbf_mm.cli import run_cli
    run_cli(main)
