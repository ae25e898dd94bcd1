"""The `fpn` command line: one thin module per command over :mod:`fpncli.engine`."""
