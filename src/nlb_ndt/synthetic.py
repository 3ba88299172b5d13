"""Stable entry point `python -m nlb_ndt.synthetic` (the generator lives in
`nlb_ndt.data.synthetic`)."""

import sys

from nlb_ndt.data.synthetic import generate, main

__all__ = ["generate", "main"]

if __name__ == "__main__":
    sys.exit(main())
