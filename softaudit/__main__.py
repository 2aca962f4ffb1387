"""`python -m softaudit` runs the command line."""

from softaudit.cli import main

main()
