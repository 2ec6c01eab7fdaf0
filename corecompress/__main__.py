"""``python -m corecompress`` (used by ``torchrun -m corecompress``)."""
from corecompress.tools.cli import main

raise SystemExit(main())
