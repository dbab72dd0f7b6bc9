"""Sub-commands of the `inspectd` CLI, one module each (see `inspectd.cli`)."""
