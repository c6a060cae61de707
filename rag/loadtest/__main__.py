import sys

from rag.loadtest.command import main

sys.exit(main())
