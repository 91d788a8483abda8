"""`python -m weaving` is the `weaving` command."""

from weaving.cli import main

if __name__ == "__main__":
    main()
