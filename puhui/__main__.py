import sys

from puhui.cli import main

sys.exit(main())
