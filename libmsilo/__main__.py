"""``python -m libmsilo``: the ``msilo`` command without relying on the scripts directory."""

from .cli import main

main()
