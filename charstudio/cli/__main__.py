import sys

from charstudio.cli import main

sys.exit(main())
