import sys

from benchmarks.captions.cli import main

sys.exit(main())
