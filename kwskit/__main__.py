import sys

from kwskit.cli import main

sys.exit(main())
