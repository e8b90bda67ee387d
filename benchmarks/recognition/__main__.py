import sys

from benchmarks.recognition.run import main

sys.exit(main())
