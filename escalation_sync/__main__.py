"""`python -m escalation_sync ...`: the same command line as the `escalation-sync` script and `python sync.py`."""

import sys

from sync import main

sys.exit(main())
