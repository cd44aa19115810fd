"""`python -m workers.broker.adapters.paper …` runs the paper exchange (see `server`)."""

import sys

from workers.broker.adapters.paper.server import main

sys.exit(main())
