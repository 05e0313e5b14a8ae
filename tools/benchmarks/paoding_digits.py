"""Paoding on the sklearn digits, the paper's MLP setting: accuracy and FGSM robustness vs ratio.

Trains 64-128-128-64-10 MLPs with ReLU and with sigmoid on the 8x8 digits (features scaled
to [0, 1], split with seed 42), then prunes copies of them with

- Paoding STOCHASTIC (the paper's method, recursive, progressive to 0.8),
- Paoding IMPACT (greedy over a pool, recursive, progressive to 0.8),
- Paoding BASELINE (lowest pair saliency, one shot per ratio; capped at 0.5),
- one-shot L1 (drop the units with the smallest L1 norm of incoming weights, no merge),

and evaluates test accuracy and FGSM robustness (eps as a fraction of the [0, 1] input range)
after every step / at every ratio. Only the test split is used, and only for reporting.
Writes docs/paoding_digits.md (table) and docs/paoding_digits.png (plot) and prints the table.

The offline-benchmark CNN classifier (conv-block extension, Paoding followed by DFBF
fine-tuning) is ``tools/benchmarks/paoding_cnn.py``.

    python -m tools.benchmarks.paoding_digits [--step 0.025] [--out-dir docs]
"""
import argparse
import copy
import math
import os.path as osp
import time

import numpy as np
import torch
import torch.nn as nn

import dfbf_mm.pruning.paoding  # noqa: F401  (registers the Paoding pruner)
from dfbf_mm.evaluation.fgsm_robustness import fgsm_counts
from dfbf_mm.pruning.paoding import remove_units
from dfbf_mm.registry import PRUNERS

EPSILONS = (0.01, 0.05, 0.1)
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SEED = 42


def load_digits_split():
    """Digits features in [0, 1] (pixel values are 0..16), 75/25 split with seed 42."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    x = data.data.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(x, data.target, test_size=0.25, random_state=SEED,
                                          stratify=data.target)
    t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return t(xtr, torch.float32), t(ytr, torch.long), t(xte, torch.float32), t(yte, torch.long)


def make_mlp(act: type) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), act(), nn.Linear(128, 128), act(), nn.Linear(128, 64),
                         act(), nn.Linear(64, 10))


def train(act: type, xtr, ytr, epochs: int = 60) -> nn.Sequential:
    """Adam, batch 64, fixed seed: a few seconds on CPU."""
    torch.manual_seed(SEED)
    model = make_mlp(act)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3 if act is nn.Sigmoid else 1e-3)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model.eval()


def evaluate_fn(xte, yte):
    def evaluate(model):
        correct, survived = fgsm_counts(model, xte, yte, EPSILONS, 1.0, 0.0, 1.0)
        out = dict(accuracy=correct / len(yte))
        out.update({f'fgsm_{e:g}': survived[e] / max(correct, 1) for e in EPSILONS})
        return out
    return evaluate


def hidden_pairs(model: nn.Sequential):
    lins = [m for m in model if isinstance(m, nn.Linear)]
    return list(zip(lins[:-1], lins[1:]))


def l1_one_shot(model: nn.Sequential, ratio: float) -> float:
    """Remove the floor(ratio * width) units with the smallest incoming L1 norm per hidden layer."""
    removed = total = 0
    for lin, nxt in hidden_pairs(model):
        n = lin.out_features
        k = int(math.floor(ratio * n + 1e-9))
        norms = lin.weight.detach().abs().sum(1)
        keep = torch.argsort(norms, descending=True, stable=True)[:n - k].tolist()
        remove_units(lin, nxt, keep)
        removed, total = removed + k, total + n
    return removed / total


def run_progressive(model, mode, step, evaluate):
    pruner = PRUNERS.build(dict(type='PaodingPruner', target=max(RATIOS), step=step, mode=mode,
                                recursive=True, seed=SEED, input_range=(0.0, 1.0)))
    pruner.prune(copy.deepcopy(model), evaluate=evaluate)
    return [(r['ratio'], r['metrics']) for r in pruner.records]


def run_one_shot(model, method, evaluate):
    rows = []
    for ratio in RATIOS:
        if method == 'baseline' and ratio > 0.5:
            break  # disjoint pair merges cannot remove more than half of a layer in one shot
        m = copy.deepcopy(model)
        if method == 'l1':
            achieved = l1_one_shot(m, ratio)
        else:
            pruner = PRUNERS.build(dict(type='PaodingPruner', target=ratio, mode='baseline', seed=SEED))
            pruner.prune(m)
            achieved = pruner.records[-1]['ratio']
        rows.append((achieved, evaluate(m)))
    return rows


def at_ratios(curve):
    """For each reported ratio, the progressive record closest to it."""
    return [min(curve, key=lambda rm: abs(rm[0] - r)) for r in RATIOS]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--step', type=float, default=0.025, help='progressive step (tool: 0.025)')
    parser.add_argument('--out-dir', default=osp.join(osp.dirname(__file__), '..', '..', 'docs'))
    args = parser.parse_args()
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = load_digits_split()
    evaluate = evaluate_fn(xte, yte)
    curves, lines = {}, []
    for act_name, act in (('ReLU', nn.ReLU), ('sigmoid', nn.Sigmoid)):
        t0 = time.time()
        model = train(act, xtr, ytr)
        dense = evaluate(model)
        print(f'{act_name} MLP trained in {time.time() - t0:.1f} s: accuracy {dense["accuracy"]:.4f}')
        for method in ('stochastic', 'impact'):
            t0 = time.time()
            curves[(act_name, method)] = run_progressive(model, method, args.step, evaluate)
            print(f'  {method}: {time.time() - t0:.1f} s')
        for method in ('baseline', 'l1'):
            curves[(act_name, method)] = [(0.0, dense)] + run_one_shot(model, method, evaluate)
        labels = dict(dense='unpruned', stochastic='STOCHASTIC', impact='IMPACT', baseline='BASELINE',
                      l1='L1 one-shot')
        for method in ('dense', 'stochastic', 'impact', 'baseline', 'l1'):
            if method == 'dense':
                rows = [(0.0, dense)]
            else:
                rows = curves[(act_name, method)]
                rows = at_ratios(rows) if method in ('stochastic', 'impact') else rows[1:]
            for ratio, m in rows:
                lines.append(f'| {act_name} | {labels[method]} | '
                             f'{ratio:.3f} | {m["accuracy"]:.4f} | '
                             + ' | '.join(f'{m[f"fgsm_{e:g}"]:.4f}' for e in EPSILONS) + ' |')
    header = ('| MLP | method | pruned ratio | accuracy | '
              + ' | '.join(f'FGSM rob. eps={e:g}' for e in EPSILONS) + ' |\n'
              + '|' + '---|' * (4 + len(EPSILONS)))
    table = header + '\n' + '\n'.join(lines)
    print(table)
    write_outputs(args.out_dir, table, curves, args.step)


def write_outputs(out_dir, table, curves, step):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for row, act_name in enumerate(('ReLU', 'sigmoid')):
        for col, key in enumerate(('accuracy', 'fgsm_0.05')):
            ax = axes[row, col]
            for method, style in (('stochastic', '-'), ('impact', '--'), ('baseline', 'o-'), ('l1', 's:')):
                pts = curves[(act_name, method)]
                ax.plot([p[0] for p in pts], [p[1][key] for p in pts], style, label=method, markersize=4)
            ax.set_title(f'{act_name} MLP: {"test accuracy" if key == "accuracy" else "FGSM robustness, eps=0.05"}')
            ax.set_xlabel('pruned ratio of hidden units')
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    png = osp.join(out_dir, 'paoding_digits.png')
    fig.savefig(png, dpi=110)
    md = osp.join(out_dir, 'paoding_digits.md')
    with open(md, 'w') as f:
        f.write('# Paoding on the digits MLPs\n\n'
                'Output of `python -m tools.benchmarks.paoding_digits` (sklearn digits, features in '
                '[0, 1], 75/25 split with seed 42; MLP 64-128-128-64-10; pruner seed 42; '
                f'progressive step {step}, recursive, target 0.8; BASELINE and L1 are one-shot per '
                'ratio, BASELINE capped at 0.5). "FGSM rob." = share of correctly classified test '
                'samples whose prediction survives FGSM at eps (fraction of the [0, 1] input range). '
                'Progressive rows are the step closest to each ratio; the ratio column is the '
                'achieved one. No pruning decision uses data; the test split is only evaluated. '
                'Robustness is conditional on being correct, so a badly pruned model can score a '
                'high robustness on the few samples it still gets right: read it next to accuracy.\n\n'
                + table + '\n\n![accuracy and robustness vs ratio](paoding_digits.png)\n')
    print(f'wrote {md} and {png}')


if __name__ == '__main__':
    main()
