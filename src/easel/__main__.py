"""`python -m easel` is the `easel` command."""

from easel.cli import main

main()
