"""Command-line entry points: bad input ends in one readable line, not a traceback."""
import os
import sys

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


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
    """The config of an OpenMMLab-style tool: file + ``--launcher`` + ``--cfg-options`` + work dir.

    The work dir follows the OpenMMLab tools: ``--work-dir`` > the config's > work_dirs/<name>.
    """
    import os.path as osp

    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    cfg.launcher = getattr(args, 'launcher', 'none')
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
