"""`tidm` subcommands, one module per area.

Every module here is imported by `tidm.cli.main`, and each top-level `click.Group` or `click.Command`
it defines at module level becomes a `tidm` subcommand (named after the command). A module may
also attach subcommands to a group of another module by importing that group. Adding an area is
adding a file; nothing else needs to change.
"""
