"""The table of the target-driven benchmark rows (docs/target_pruning.md) from a results.json.

    python -m tools.benchmarks.target_summary work_dirs/bench15/results.json

One row per (task, MACs target): the data-free (dfbf) metric of one-shot uniform and one-shot
global ranking (``tools/benchmarks/run.py --rules macs macs-global``), each with the MACs cut it
reached and, where run, its real-data bound.
"""
import json
import sys

RULES = ('macs', 'macs-global')


def table(results: dict, budget: str = 'full') -> str:
    head = ['task (teacher)', 'MACs target', 'one-shot uniform', 'one-shot global']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for task in ('cls', 'det', 'pose'):
        teacher = results.get(f'{budget}|{task}|teacher')
        targets = sorted({r['sparsity'] for r in results.values()
                          if r.get('task') == task and r.get('rule') in RULES and r.get('budget') == budget})
        for t in targets:
            cells = []
            for rule in RULES:
                r = results.get(f'{budget}|{task}|{rule}|s{t:g}|dfbf')
                if r is None:
                    cells.append('not run')
                    continue
                real = results.get(f'{budget}|{task}|{rule}|s{t:g}|real')
                cut = 100 * (1 - r['macs'] / r['macs_teacher'])
                cells.append(f'{r["metric"]:.2f} ({cut:.1f} % cut' + (f'; real {real["metric"]:.2f})' if real else ')'))
            lines.append(f'| {task} ({teacher["metric"]:.2f}) | {100 * t:.0f} % | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    with open(sys.argv[1]) as f:
        print(table(json.load(f)))
