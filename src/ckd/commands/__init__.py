"""Subcommands of the ``ckd`` CLI, one module each (see ``ckd.cli.COMMANDS``)."""
