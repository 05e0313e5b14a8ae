"""MACs targets on every backbone of the backbone sweep that prunes (docs/target_sweep.md).

    python -m tools.benchmarks.target_sweep [--targets 0.5 0.7] [--rankings uniform global]
        [--max-side 256] [--out docs/target_sweep.md]

For each row of ``docs/backbone_sweep.json`` that pruned and has a MACs count, the backbone of
its stock config (random weights, as in the sweep) is pruned by
``L1FilterPruner(target=dict(macs=t), ranking=r)`` on one input of the sweep's size (longer side
capped at ``--max-side`` to keep CPU time down), and the MACs cut is measured with
``count_macs_params`` independently of the pruner. Rows are saved as they finish
(``<out>.json``), so a rerun resumes.
"""
if not __package__:  # it imports its sibling modules through the package
    raise SystemExit('run it from the repository root as: python -m tools.benchmarks.target_sweep ARGS')
import argparse
import json
import os.path as osp
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--targets', nargs='+', type=float, default=[0.5, 0.7])
    p.add_argument('--rankings', nargs='+', default=['uniform', 'global'])
    p.add_argument('--max-side', type=int, default=256)
    p.add_argument('--sweep', default=osp.join(REPO, 'docs', 'backbone_sweep.json'))
    p.add_argument('--out', default=osp.join(REPO, 'docs', 'target_sweep.md'))
    args = p.parse_args(argv)
    import torch
    from tools import backbone_sweep as bs
    from dfbf_mm.export.profile import count_macs_params
    from dfbf_mm.pruning import L1FilterPruner
    from dfbf_mm.registry import MODELS
    from dfbf_mm.stock_model import enter_scope

    with open(args.sweep) as f:
        rows = [r for r in json.load(f)['rows'] if r['status'] == 'yes' and r['macs_cut'] not in ('', 'n/a')]
    store = args.out + '.json'
    done = json.load(open(store)) if osp.isfile(store) else {}
    for r in rows:
        scope, name = r['backbone'].split('.', 1)
        path = osp.join(bs.configs_root(scope), r['config'].split('::', 1)[1])
        for t in args.targets:
            for ranking in args.rankings:
                key = f'{r["backbone"]}|{t:g}|{ranking}'
                if key in done:
                    continue
                enter_scope(scope)
                cfg = bs.load_stock_config(path)
                h, w = bs.input_size(cfg, scope)
                s = min(1.0, args.max_side / max(h, w))
                h, w = max(32, int(h * s) // 32 * 32), max(32, int(w * s) // 32 * 32)
                torch.manual_seed(0)
                backbone = MODELS.build(cfg.model.backbone.to_dict())
                backbone.eval()  # some backbones' train() returns None: not chained
                x = torch.randn(1, 3, h, w)
                before = count_macs_params(backbone, x)[0]
                start = time.perf_counter()
                try:
                    pruner = L1FilterPruner(target=dict(macs=t), ranking=ranking, trace_time_limit=600)
                    pruner.prune(backbone, x)
                    cut = 1 - count_macs_params(backbone, x)[0] / before
                    row = dict(cut=cut, reported=pruner.report['target']['reached'],
                               sparsity=pruner.report['target']['sparsity'], note='')
                except ValueError as e:
                    row = dict(cut=None, note=str(e)[:200])
                row.update(backbone=r['backbone'], config=r['config'], target=t, ranking=ranking,
                           input=f'{h}x{w}', seconds=time.perf_counter() - start)
                done[key] = row
                with open(store, 'w') as f:
                    json.dump(done, f, indent=1, sort_keys=True)
                print(key, row, flush=True)
    lines = ['# MACs targets on the swept backbones', '',
             'Produced by `python -m tools.benchmarks.target_sweep` (random weights, one input per '
             'backbone; the cut is counted with `count_macs_params`, independently of the pruner).', '',
             '| backbone | stock config | input | ranking | target | MACs cut | within ±2 points | sparsity found | s |',
             '|---|---|---|---|---|---|---|---|---|']
    for key in sorted(done):
        d = done[key]
        ok = '' if d['cut'] is None else ('yes' if abs(d['cut'] - d['target']) <= 0.02 else 'NO')
        cut = d['note'] if d['cut'] is None else f'{100 * d["cut"]:.1f} %'
        sp = '' if d['cut'] is None else f'{d["sparsity"]:.3f}'
        lines.append(f'| {d["backbone"]} | {d["config"]} | {d["input"]} | {d["ranking"]} | '
                     f'{100 * d["target"]:.0f} % | {cut} | {ok} | {sp} | {d["seconds"]:.0f} |')
    with open(args.out, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
