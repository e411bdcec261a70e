"""``python -m sapiens2_edge.cli``: the sapiens2-edge command."""

from . import main

main()
