from ganaudit.cli import main
import sys

sys.exit(main())
