"""Print the table of every ``dfbf`` option (from ``dfbf_mm/schema.py``), or write it into the
user guide between its ``<!-- dfbf-options -->`` markers.

    python tools/options_table.py [--doc docs/configuration.md]
"""
import argparse
import re

from dfbf_mm.cli import run_cli
from dfbf_mm.schema import options_table

BEGIN, END = '<!-- dfbf-options:begin (tools/options_table.py) -->', '<!-- dfbf-options:end -->'


DOC = 'docs/configuration.md'


def doc_table(text: str) -> str:
    """The options table inside ``text`` (between the markers), or a one-line error."""
    match = re.search(re.escape(BEGIN) + r'\n(.*?)\n' + re.escape(END), text, re.S)
    if match is None:
        raise ValueError(f'--doc: no {BEGIN} ... {END} block in the file')
    return match.group(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--doc', help=f'rewrite the table in this file ({DOC})')
    args = p.parse_args(argv)
    table = options_table()
    if not args.doc:
        print(table)
        return
    with open(args.doc) as f:
        text = f.read()
    old = doc_table(text)
    with open(args.doc, 'w') as f:
        f.write(text.replace(f'{BEGIN}\n{old}\n{END}', f'{BEGIN}\n{table}\n{END}'))
    print(f'{args.doc}: options table {"unchanged" if old == table else "rewritten"}')


if __name__ == '__main__':
    run_cli(main)
