import sys

from modulm.cli import main

sys.exit(main())
