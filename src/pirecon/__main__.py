import sys

from pirecon.cli import main

sys.exit(main())
