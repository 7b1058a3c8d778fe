import sys

from lrgate.cli import main

sys.exit(main())
