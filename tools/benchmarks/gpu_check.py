"""The GPU check: synthesis and distillation speed of two shipped configs, one detection config end to end.

    python -m tools.benchmarks.gpu_check [--device cuda|cpu] [--quick] [--out FILE]
        [--work-dir work_dirs/gpu_check] [--e2e-config configs/dfbf_faster_rcnn_r50_coco.py]

``tools/gpu_check.sh`` runs it after the set-up. Teachers have random weights, built from each
config's own model as tests/test_shipped_configs.py builds them (speed does not depend on the
values). Rows, each on ``--device``:

1. ``tools/synthesize.py`` (its ``main``, in this process, so the peak GPU memory is read) with
   ``configs/dfbf_yolox_coco.py`` (DeepInversion ``detection`` preset, 256 px, batch 16) and
   ``configs/dfbf_resnet50_imagenet.py`` (generator ``classification`` preset, 224 px, batch 32):
   a few batches at the config's image and batch size. DeepInversion's 2000 + 1000 steps per
   batch are shortened in the same 2:1 ratio of half- and full-resolution steps, so passes per
   second stand for the preset; the notes give the preset's images per second at that rate.
   Teacher passes and seconds are read from the cached batches' records.
2. One DFBF distillation step (``DataFreeDistiller.train_step``, the model ``tools/train.py``
   builds from the config) of each, at the config's image size and train batch size; median
   of ``--steps`` after two warm-up steps.
3. ``tools/train.py`` on ``--e2e-config`` (default Faster R-CNN R50: the RPN's batched NMS,
   RoIAlign and the box head's NMS, so every mmcv op the shipped detectors call at test time)
   with a tiny budget, its val loop on a tiny COCO val set (tests/tiny_val_sets.py) and the
   export; then the stock mmdet ``tools/test.py`` on the export.

``--quick`` (the default on CPU): batches of 2, a few passes, 2 distillation steps. Every row
runs even when one before it failed; the exit status is 1 when any failed. The table is printed
and written to ``--out``.
"""
import argparse
import glob
import os
import os.path as osp
import re
import statistics
import subprocess
import sys
import time
import traceback

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SYNTH_CONFIGS = {'YOLOX-s': 'configs/dfbf_yolox_coco.py', 'ResNet-50': 'configs/dfbf_resnet50_imagenet.py'}
METRIC = 'coco/bbox_mAP'
FALLBACK_LINE = 'run through torchvision'


def _peak_gib(device) -> str:
    if torch.device(device).type != 'cuda':
        return '-'
    return f'{torch.cuda.max_memory_allocated(device) / 2**30:.2f}'


def _reset_peak(device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _teacher(config: str, work_dir: str) -> str:
    """A random-weights checkpoint of ``config``'s model (once per work dir)."""
    from mmengine.config import Config
    from dfbf_mm.stock_model import build_stock_model
    path = osp.join(work_dir, 'teachers', osp.basename(config).replace('.py', '.pth'))
    if not osp.isfile(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
        torch.manual_seed(0)
        torch.save({'state_dict': build_stock_model(Config.fromfile(osp.join(REPO, config))).state_dict()}, path)
    return path


def synthesis_row(name: str, config: str, device: str, quick: bool, work_dir: str) -> dict:
    from mmengine.config import Config
    from dfbf_mm.synthesis.presets import get_generator_preset, get_preset
    from tools import synthesize
    cfg = Config.fromfile(osp.join(REPO, config))
    synth, data = cfg.dfbf.synthesizer, cfg.dfbf.synthetic_data
    batch = 2 if quick else data.batch_size
    batches = 2 if quick else 3
    options = []
    if synth.type == 'DeepInversionSynthesizer':
        preset = get_preset(synth.preset)
        per_batch = preset['half_res_iterations'] + preset['iterations'] + preset['coarse_iterations']
        full = 1 if quick else 20  # the preset's 2:1 of half- and full-resolution steps
        options = [f'dfbf.synthesizer.iterations={full}',
                   f'dfbf.synthesizer.half_res_iterations={2 * full if preset["half_res_iterations"] else 0}',
                   'dfbf.synthesizer.warmup_iters=0']
        what = f"DeepInversion `{synth.preset}`, steps {2 * full}+{full} of {preset['half_res_iterations']}+{preset['iterations']}"
        after = ''
    else:
        preset = get_generator_preset(synth.preset)
        per_batch = preset['steps'] + preset['refine_steps']
        if quick:
            options = ['dfbf.synthesizer.first_steps=1', 'dfbf.synthesizer.steps=1']
        what = f"generator `{synth.preset}`{' (1 step per batch)' if quick else ''}"
        after = " after a stream's first"
    out = osp.join(work_dir, f'synth_{name}_{device.replace(":", "")}')
    size = tuple(data.image_size)
    _reset_peak(device)
    synthesize.main([config, _teacher(config, work_dir), '--num-images', str(batch * batches),
                     '--batch-size', str(batch), '--out', out, '--device', device,
                     '--cfg-options', f'dfbf.synthetic_data.cache_dir={out}/cache', *options])
    records = [torch.load(p, map_location='cpu', weights_only=True)['stats']
               for p in sorted(glob.glob(osp.join(out, 'cache', '*', 'batch_*.pt')))]
    passes, seconds = sum(r['teacher_passes'] for r in records), sum(r['seconds'] for r in records)
    rate = passes / seconds
    return dict(row=f'synthesize {name}', what=f'{what}, {size[0]}x{size[1]}, batch {batch}, {len(records)} batches',
                passes=rate, images=batch * len(records) / seconds, step=seconds / passes,
                memory=_peak_gib(device), ok='-',
                notes=f'the preset: {per_batch} passes per batch{after} -> {batch * rate / per_batch:.3g} images/s')


def distill_row(name: str, config: str, device: str, quick: bool, steps: int, work_dir: str) -> dict:
    from mmengine.config import Config
    from mmengine.logging import MessageHub
    from mmengine.optim import build_optim_wrapper
    from dfbf_mm.engine.dfbf_config import to_runner_config
    from dfbf_mm.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.dfbf.teacher_checkpoint = _teacher(config, work_dir)
    cfg.work_dir = osp.join(work_dir, f'distill_{name}')
    runner_cfg = to_runner_config(cfg)
    MessageHub.get_current_instance().update_info('iter', 0)
    model = MODELS.build(runner_cfg.model).to(device).train()
    optim = build_optim_wrapper(model, runner_cfg.optim_wrapper)
    data = cfg.dfbf.synthetic_data
    batch = 2 if quick else (data.get('train_batch_size') or data.batch_size)
    size = tuple(data.image_size)
    images = dict(inputs=[torch.randn(3, *size) for _ in range(batch)])
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == 'cuda' else (lambda: None)
    times = []
    _reset_peak(device)
    for i in range(steps + 2):
        sync()
        start = time.perf_counter()
        model.train_step(images, optim)
        sync()
        if i >= 2:  # after two warm-up steps
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return dict(row=f'distill step {name}', what=f'DataFreeDistiller.train_step, {size[0]}x{size[1]}, batch {batch}, '
                f'median of {steps}', passes=1 / step, images=batch / step, step=step,
                memory=_peak_gib(device), ok='-', notes='one teacher forward per step')


def _tiny_budget(cfg, teacher: str) -> list:
    """``--cfg-options`` that shrink the budget of ``cfg`` (as tests/test_shipped_configs.py)."""
    from dfbf_mm.synthesis.presets import get_preset
    synth = cfg.dfbf.synthesizer
    if synth.type == 'GeneratorSynthesizer':
        steps = ['dfbf.synthesizer.first_steps=1', 'dfbf.synthesizer.steps=1', 'dfbf.synthesizer.refine_steps=0']
    else:
        preset = get_preset(synth.get('preset', 'classification'))
        steps = [f'dfbf.synthesizer.{k}=1' for k in ('iterations', 'half_res_iterations', 'coarse_iterations')
                 if synth.get(k, preset[k]) > 0]
    rcnn = ['model.test_cfg.rcnn.score_thr=0.0'] if 'rcnn' in (cfg.model.get('test_cfg') or {}) else []
    return [*rcnn, f'dfbf.teacher_checkpoint={teacher}', 'dfbf.synthetic_data.num_images=2',
            'dfbf.synthetic_data.batch_size=2', *steps, 'dfbf.schedule.epochs=1', 'dfbf.schedule.lr_steps=[1]',
            'dfbf.schedule.val_interval=1', 'dfbf.export.profile=False']


def _run(args, cwd, log, device) -> tuple:
    env = dict(os.environ, DFBF_TRACEBACK='1', PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    if torch.device(device).type == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''  # the stock tools take a GPU when they see one
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    with open(log, 'w') as f:
        f.write(proc.stdout + proc.stderr)
    return proc.returncode, proc.stdout + proc.stderr, seconds


def _metric(output: str):
    values = re.findall(re.escape(METRIC) + r"'?:\s*(-?[0-9.]+)", output)
    return float(values[-1]) if values else None


def end_to_end_rows(config: str, device: str, work_dir: str) -> list:
    """tools/train.py on ``config`` (tiny budget, val loop, export), then the stock test.py."""
    from mmengine.config import Config
    sys.path.insert(0, osp.join(REPO, "tests"))  # the tests' tiny COCO val set (tests/ is no package)
    from tiny_val_sets import coco_val
    cfg = Config.fromfile(osp.join(REPO, config))
    root = osp.join(work_dir, 'e2e_data')
    coco_val(root)
    work = osp.join(work_dir, f'e2e_{device.replace(":", "")}')
    rc, out, seconds = _run([osp.join(REPO, 'tools', 'train.py'), osp.join(REPO, config), '--work-dir', work,
                             '--cfg-options', *_tiny_budget(cfg, _teacher(config, work_dir))],
                            root, osp.join(work_dir, 'e2e_train.log'), device)
    deploy, ckpt = osp.join(work, 'export', 'pruned.py'), osp.join(work, 'export', 'pruned.pth')
    val = _metric(out) if 'Epoch(val)' in out else None
    exported = osp.isfile(deploy) and osp.isfile(ckpt)
    fallback = ', mmcv ops via torchvision' if FALLBACK_LINE in out else ''
    name = osp.basename(config)
    rows = [dict(row='train + val + export', what=f'tools/train.py {name}, tiny budget (2 images, 1 epoch); step time: the whole run',
                 passes=None, images=None, step=seconds, memory='-',
                 ok='yes' if rc == 0 and val is not None and exported else 'NO',
                 notes=f'exit {rc}, val {METRIC}={val}, export {"written" if exported else "missing"}{fallback}; '
                       f'log {osp.join(work_dir, "e2e_train.log")}')]
    if not exported:
        rows.append(dict(row='stock tools/test.py', what='the export', passes=None, images=None, step=None,
                         memory='-', ok='NO', notes='no export to test'))
        return rows
    stock_test = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'tools', 'test.py')
    rc, out, seconds = _run([stock_test, deploy, ckpt, '--work-dir', osp.join(work, 'test')], root,
                            osp.join(work_dir, 'e2e_test.log'), device)
    value = _metric(out)
    fallback = ', mmcv ops via torchvision' if FALLBACK_LINE in out else ''
    rows.append(dict(row='stock tools/test.py', what='mmdet tools/test.py export/pruned.py export/pruned.pth; step time: the whole run',
                     passes=None, images=None, step=seconds, memory='-',
                     ok='yes' if rc == 0 and value is not None else 'NO',
                     notes=f'exit {rc}, {METRIC}={value}{fallback}; log {osp.join(work_dir, "e2e_test.log")}'))
    return rows


def _fmt(value, digits=2) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def environment(device: str) -> str:
    import mmcv
    from dfbf_mm.ops_fallback import mmcv_has_cuda_ops, uses_fallback
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    cap = f', compute capability {".".join(map(str, torch.cuda.get_device_capability(dev)))}' if dev.type == 'cuda' else ''
    ops = 'torchvision fallback' if uses_fallback(dev) else 'mmcv'
    return (f'device {device} ({name}{cap}); torch {torch.__version__}, mmcv {mmcv.__version__} '
            f'({"CUDA ops" if mmcv_has_cuda_ops() else "CPU ops only"}; nms/RoIAlign on this device: {ops})')


def table(rows: list, header: str) -> str:
    lines = [header, '',
             '| row | what | teacher passes/s | images/s | step time (s) | peak GPU memory (GiB) | evaluation ok | notes |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['row']} | {r['what']} | {_fmt(r.get('passes'))} | {_fmt(r.get('images'))} | "
                     f"{_fmt(r.get('step'), 3)} | {r.get('memory', '-')} | {r.get('ok', '-')} | {r.get('notes', '')} |")
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--quick', action='store_true', help='small batches and few passes (the default on CPU)')
    p.add_argument('--steps', type=int, default=None, help='distillation steps timed (default 10, quick 2)')
    p.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'gpu_check'))
    p.add_argument('--out', default=None, help='table file (default WORK_DIR/gpu_check_<device>.md)')
    p.add_argument('--e2e-config', default='configs/dfbf_faster_rcnn_r50_coco.py')
    p.add_argument('--rows', nargs='+', default=['synthesize', 'distill', 'e2e'],
                   choices=['synthesize', 'distill', 'e2e'])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'--device {args.device}: torch {torch.__version__} sees no CUDA device; '
                         'use --device cpu')
    quick = args.quick or dev.type == 'cpu'
    steps = args.steps or (2 if quick else 10)
    os.makedirs(args.work_dir, exist_ok=True)
    import dfbf_mm  # noqa: F401  (the mmcv op fallback, the registries)
    jobs = []
    if 'synthesize' in args.rows:
        jobs += [(f'synthesize {n}', lambda n=n, c=c: [synthesis_row(n, c, args.device, quick, args.work_dir)])
                 for n, c in SYNTH_CONFIGS.items()]
    if 'distill' in args.rows:
        jobs += [(f'distill step {n}', lambda n=n, c=c: [distill_row(n, c, args.device, quick, steps, args.work_dir)])
                 for n, c in SYNTH_CONFIGS.items()]
    if 'e2e' in args.rows:
        jobs.append(('end to end', lambda: end_to_end_rows(args.e2e_config, args.device, args.work_dir)))
    rows, failed = [], 0
    for name, job in jobs:
        start = time.perf_counter()
        print(f'[gpu_check] {name} ...', flush=True)
        try:
            new = job()
            failed += sum(r['ok'] == 'NO' for r in new)
        except Exception as e:  # the other rows still run
            traceback.print_exc()
            new = [dict(row=name, what='', ok='NO', notes=f'FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}')]
            failed += 1
        rows += new
        print(f'[gpu_check] {name}: {time.perf_counter() - start:.0f} s', flush=True)
    command = 'python -m tools.benchmarks.gpu_check ' + ' '.join(argv if argv is not None else sys.argv[1:])
    text = table(rows, f'`{command.strip()}` on {environment(args.device)}.')
    out = args.out or osp.join(args.work_dir, f'gpu_check_{dev.type}.md')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        f.write(text)
    print(text)
    print(f'[gpu_check] table written to {out}; {failed} row(s) failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
