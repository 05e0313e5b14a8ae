"""setup.py declares every third-party package dfbf_mm imports when imported, except those an
OpenMMLab environment brings in its own build (torch, torchvision; mmcv is not imported)."""
import ast
import os.path as osp
import re
import sys
from importlib.metadata import packages_distributions

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ENVIRONMENT_OWN = {'torch', 'torchvision'}  # checked by dfbf_mm/compat.py, never installed by pip


def _setup_lists():
    tree = ast.parse(open(osp.join(REPO, 'setup.py')).read())
    found = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name)}
    return found['INSTALL_REQUIRES'], found['EXTRAS_REQUIRE']


def _name(requirement: str) -> str:
    return re.split(r'[<>=!~;\[ ]', requirement, 1)[0].lower().replace('_', '-')


def _import_time_modules(path):
    """Top-level names imported when ``path`` is imported (module level, if/try blocks; not
    inside functions or classes)."""
    names, todo = set(), list(ast.parse(open(path).read()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names.update(a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module.split('.')[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += node.body + getattr(node, 'orelse', []) + getattr(node, 'finalbody', [])
            todo += [s for h in getattr(node, 'handlers', []) for s in h.body]
    return names


def test_every_import_time_dependency_is_declared():
    requires, _ = _setup_lists()
    declared = {_name(r) for r in requires}
    dists = packages_distributions()
    modules = set()
    for root, _, files in __import__('os').walk(osp.join(REPO, 'dfbf_mm')):
        for f in files:
            if f.endswith('.py'):
                modules |= _import_time_modules(osp.join(root, f))
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m != 'dfbf_mm'}
    assert {'torch', 'tqdm', 'torch_pruning', 'mmengine', 'cv2'} <= third_party
    undeclared = {m for m in third_party - ENVIRONMENT_OWN
                  if not {d.lower().replace('_', '-') for d in dists.get(m, [m])} & declared}
    assert not undeclared, f'imported by dfbf_mm at import time but not in setup.py: {sorted(undeclared)}'
    # what the environment owns is never a requirement (pip would replace its build)
    assert not declared & (ENVIRONMENT_OWN | {'mmcv', 'mmcv-full'})


def test_private_api_users_are_bounded():
    requires, extras = _setup_lists()
    by_name = {_name(r): r for r in requires}
    assert '<' in by_name['torch-pruning'] and '<' in by_name['mmengine']
    assert by_name['numpy'] == 'numpy<2'
    for r in extras['onnx']:  # numpy-1 releases only
        assert '<' in r


@pytest.mark.parametrize('module', ['onnxruntime', 'sklearn'])
def test_optional_imports_are_lazy_and_in_an_extra(module):
    """onnxruntime / scikit-learn are imported inside functions only, and named in an extra."""
    _, extras = _setup_lists()
    users = []
    for root, _, files in __import__('os').walk(osp.join(REPO, 'dfbf_mm')):
        users += [f for f in files if f.endswith('.py') and module in _import_time_modules(osp.join(root, f))]
    assert users == []
    dist = {'onnxruntime': 'onnxruntime', 'sklearn': 'scikit-learn'}[module]
    assert any(_name(r) == dist for reqs in extras.values() for r in reqs)
