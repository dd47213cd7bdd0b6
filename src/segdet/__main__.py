import sys

from segdet.cli.main import main

sys.exit(main())
