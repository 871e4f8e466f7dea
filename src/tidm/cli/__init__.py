"""The `tidm` command line: wiring only."""
