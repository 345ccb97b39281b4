import sys

from conductor.tools.cli import main

sys.exit(main())
