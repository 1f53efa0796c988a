from hyperion.cli.main import main

raise SystemExit(main())
