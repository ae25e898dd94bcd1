"""`python -m fpncli` is the same as the `fpn` command (and what `torchrun -m fpncli` runs)."""

from fpncli.cli.app import main

if __name__ == "__main__":
    main()
