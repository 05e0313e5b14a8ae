"""Command-line entry points: bad input ends in one readable line, not a traceback."""
import argparse
import difflib
import os
import sys

from mmengine.config import DictAction

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are user errors too: ``run_cli`` prints them in one line
    (exit 2, as argparse does) instead of the usage block."""

    def error(self, message):
        raise ValueError(f'{message} (see {self.prog} --help)')


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` (``KEY=VALUE`` pairs) that names a pair without ``=`` instead of
    failing with "not enough values to unpack"."""

    def __call__(self, parser, namespace, values, option_string=None):
        for kv in values if isinstance(values, list) else [values]:
            if '=' not in kv or not kv.split('=', 1)[0]:
                raise argparse.ArgumentError(self, f'{kv!r} is not KEY=VALUE (e.g. model.backbone.depth=50)')
        super().__call__(parser, namespace, values, option_string)


def add_cfg_options(parser: argparse.ArgumentParser, help: str = None) -> None:  # noqa: A002
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default=None,
                        help=help or 'override settings in the config, KEY=VALUE (dotted keys)')


# top-level keys MMEngine's Runner (and our runner / tools) read even where a config lacks them
RUNNER_KEYS = ('model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader',
               'train_cfg', 'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper',
               'param_scheduler', 'val_evaluator', 'test_evaluator', 'default_hooks',
               'custom_hooks', 'data_preprocessor', 'load_from', 'resume', 'launcher', 'env_cfg',
               'log_processor', 'log_level', 'visualizer', 'default_scope', 'randomness',
               'experiment_name', 'compile', 'runner_type', 'custom_imports', 'dfbf')


DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def _closest(key, candidates, cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(str(key), sorted(map(str, candidates)), n=1, cutoff=cutoff)
    return f'; did you mean {close[0]!r}?' if close else ''


def merge_cfg_options(cfg, options) -> None:
    """``cfg.merge_from_dict(options)`` after checking the keys: an unknown top-level key is an
    error naming the closest existing one (a typo would otherwise change nothing); a new key
    inside an existing dict is allowed (stock options a config leaves at their default) but a
    near-miss of an existing sibling is flagged in one ``warning:`` line."""
    if not options:
        return
    known = set(cfg.keys()) | set(RUNNER_KEYS)
    root = cfg.to_dict()
    for key in options:
        parts = str(key).split('.')
        if parts[0] not in known:
            raise ValueError(f'--cfg-options: {key!r}: the config has no key {parts[0]!r}'
                             f'{_closest(parts[0], known)}')
        node = root
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        else:
            leaf = parts[-1]
            loader_option = len(parts) == 2 and parts[0] in DATALOADERS  # check_dataloaders decides
            if isinstance(node, dict) and len(parts) > 1 and leaf not in node and not loader_option:
                # 0.8: a one-letter slip (dpth/depth), not a related option (frozen_stages/num_stages)
                hint = _closest(leaf, [k for k in node if isinstance(k, str)], cutoff=0.8)
                if hint:
                    print(f'warning: --cfg-options: {key!r} adds {leaf!r} to '
                          f'{".".join(parts[:-1])}{hint}', file=sys.stderr)
    cfg.merge_from_dict(options)


def _dataloader_keys() -> set:
    import inspect

    from torch.utils.data import DataLoader
    # DataLoader's own arguments plus what MMEngine's Runner.build_dataloader takes out first
    return (set(inspect.signature(DataLoader.__init__).parameters) - {'self'}
            | {'num_batch_per_epoch', 'disable_subprocess_warning'})


def check_dataloaders(cfg) -> None:
    """A key of ``train/val/test_dataloader`` that is no dataloader option is a one-line error
    (MMEngine passes them on to torch's DataLoader, which fails with a TypeError traceback
    only once the loop starts)."""
    allowed = None
    for name in DATALOADERS:
        loader = cfg.get(name)
        if not isinstance(loader, dict):
            continue
        allowed = allowed or _dataloader_keys()
        for key in loader:
            if key not in allowed:
                raise ValueError(f'{name}.{key}: not a dataloader option{_closest(key, allowed)} '
                                 f'(options: {", ".join(sorted(allowed))})')


def run_cli(main) -> None:
    """Run ``main()``; user errors print ``error: <message>`` and exit 2.

    Set ``DFBF_TRACEBACK=1`` to see the full traceback.
    """
    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get('DFBF_TRACEBACK'):
            raise
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f'error: {message.splitlines()[0] if message else type(e).__name__}', file=sys.stderr)
        sys.exit(2)


def load_config(args):
    """The config of an OpenMMLab-style tool: file + ``--launcher`` + ``--cfg-options`` (checked,
    see :func:`merge_cfg_options`) + work dir; dataloader options are checked too.

    The work dir follows the OpenMMLab tools: ``--work-dir`` > the config's > work_dirs/<name>.
    """
    import os.path as osp

    from mmengine.config import Config
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config: file not found: {args.config!r}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = getattr(args, 'launcher', 'none')
    merge_cfg_options(cfg, args.cfg_options)
    check_dataloaders(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
