import sys

from ._process import main

sys.exit(main())
