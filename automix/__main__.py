import sys

from automix.cli import main

sys.exit(main())
