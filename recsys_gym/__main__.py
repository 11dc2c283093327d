"""``python -m recsys_gym``: the same as the ``recsys-gym`` command."""

import sys

from recsys_gym.cli import main

sys.exit(main())
