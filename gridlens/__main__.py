"""`python -m gridlens ...`: the `gridlens` command without installing the package (e.g. with
PYTHONPATH on a machine that only has the repository)."""

from gridlens.cli import main

if __name__ == "__main__":  # not when a worker process (spawn) imports this module
    main()
