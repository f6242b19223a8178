import sys

from scatterdist.cli import main

sys.exit(main())
