from batchfit.cli import main

raise SystemExit(main())
