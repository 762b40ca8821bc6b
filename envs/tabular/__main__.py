"""python -m envs.tabular ENV_ID [--gamma G]: the exact variance figures of a tabular id (envs/tabular/exact.py)."""

import sys

from envs.tabular.exact import main

sys.exit(main())
