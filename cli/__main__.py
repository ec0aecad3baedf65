"""Allow ``python -m dymn_edge``."""

from dymn_edge.cli import main

main()
