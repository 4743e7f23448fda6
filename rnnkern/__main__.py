import sys

from .apps import main

sys.exit(main())
