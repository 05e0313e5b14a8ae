"""Command-line tools of dfbf_mm (run as scripts: python tools/train.py ...)."""
