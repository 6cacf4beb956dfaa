"""`python -m xmr` is the `xmr` command."""

from xmr.cli.main import run

run()
