"""The command line: one module per command group; only here do errors become exit codes."""
