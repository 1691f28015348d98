import sys

from l2lbench.cli import main

sys.exit(main())
