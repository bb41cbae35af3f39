"""The `segbench` command: one root that dispatches to the packages' own subcommands."""
