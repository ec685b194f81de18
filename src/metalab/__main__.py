import sys

from metalab.cli.main import main

sys.exit(main())
