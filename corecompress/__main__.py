"""``python -m corecompress`` (used by ``torchrun -m corecompress``)."""
from corecompress.cli import main

raise SystemExit(main())
