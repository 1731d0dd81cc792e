"""`python -m tailor ...`, the same as the `tailor` command; also what torchrun launches:
`torchrun --nproc-per-node 2 -m tailor train cfg.yaml`."""

import sys

from tailor.cli import main

if __name__ == "__main__":
    sys.exit(main())
