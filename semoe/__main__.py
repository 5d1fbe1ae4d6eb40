import sys

from semoe.cli import main

sys.exit(main())
