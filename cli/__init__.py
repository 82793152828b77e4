"""sppdet.cli: the typer application. Parses options, builds a config, calls one stage."""
