"""`python -m liquidgen` (and `accelerate launch -m liquidgen ...`) runs the CLI."""

from liquidgen.cli import main

main()
