"""``python -m virnucpro COMMAND [ARGS]``: the ``virnucpro`` command (see :mod:`virnucpro.commands`)."""
import sys

from virnucpro.commands import main

if __name__ == "__main__":
    sys.exit(main())
