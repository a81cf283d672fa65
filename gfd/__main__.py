from gfd.cli import main

raise SystemExit(main())
