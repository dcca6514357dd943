"""Prepare VirNucPro training sequences with 500 bp chunks.

    python make_train_dataset_500.py [--data-dir data] [--workers N]

The same program as make_train_dataset_300.py with ``--chunk-size 500`` as default;
see ``python make_train_dataset_500.py --help``.
"""
from __future__ import annotations

import sys
from typing import Sequence

import make_train_dataset_300

PROG = "make_train_dataset_500.py"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help): make_train_dataset_300.py's, with 500-bp chunks by default."""
    return make_train_dataset_300.main(argv, default_chunk_size=500, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
