import sys

from evaluation.report import main

sys.exit(main())
