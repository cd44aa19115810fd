import sys

from tradefleet.cli import main

sys.exit(main())
