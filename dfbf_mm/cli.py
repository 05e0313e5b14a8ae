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
