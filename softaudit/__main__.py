"""`python -m softaudit` runs the command line."""

from softaudit.cli import main

if __name__ == "__main__":  # not when --jobs' worker processes (spawned) import this module
    main()
