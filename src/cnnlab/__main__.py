"""`python -m cnnlab ...` (what torchrun launches) is the same as the `cnnlab` command."""

from cnnlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
