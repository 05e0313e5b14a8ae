"""Where the cut went: the kept channels of every prunable group, as a table and a plot.

``pruner.report['groups']`` (L1FilterPruner) lists each group's root layer, width and kept
count; ``tools/prune.py`` writes them as ``<name>_groups.md`` and ``<name>_groups.png``.
"""
from typing import Optional


def groups_table(report: dict) -> str:
    """Markdown table of kept channels per prunable group (in backbone order), plus the
    pruner's target line when it had one."""
    lines = []
    target = report.get('target')
    if target:
        lines += [f'target: {target["metric"]} -{target["target"]:.1%}, reached '
                  f'-{target["reached"]:.1%} ({report.get("ranking", "uniform")} ranking, sparsity '
                  f'{target["sparsity"]:.3f})', '']
    lines += ['| group (root layer) | width | kept | kept % |', '|---|---|---|---|']
    for g in report['groups']:
        lines.append(f'| {g["root"]} | {g["width"]} | {g["keep"]} | {100 * g["keep"] / g["width"]:.1f} |')
    total = sum(g['width'] for g in report['groups'])
    kept = sum(g['keep'] for g in report['groups'])
    if total:
        lines.append(f'| all {len(report["groups"])} groups | {total} | {kept} | {100 * kept / total:.1f} |')
    return '\n'.join(lines) + '\n'


def plot_groups(report: dict, path: str, title: Optional[str] = None) -> Optional[str]:
    """Bar plot of kept vs original channels per group (PNG at ``path``); None without groups."""
    groups = report['groups']
    if not groups:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n = len(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * n + 2), 4.5))
    xs = range(n)
    ax.bar(xs, [g['width'] for g in groups], color='0.85', label='original width')
    ax.bar(xs, [g['keep'] for g in groups], color='tab:blue', label='kept')
    ax.set_xticks(list(xs))
    ax.set_xticklabels([g['root'] for g in groups], rotation=90, fontsize=6 if n > 30 else 8)
    ax.set_ylabel('channels')
    ax.set_title(title or 'kept channels per prunable group')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
