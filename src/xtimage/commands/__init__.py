"""Subcommands of `xt`, one module each (see `xtimage.cli`)."""
