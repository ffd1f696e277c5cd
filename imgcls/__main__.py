import sys

from imgcls.cli.main import main

sys.exit(main())
