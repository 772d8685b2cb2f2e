import sys

from fedcare.cli import main

sys.exit(main())
