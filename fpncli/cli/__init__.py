"""The `fpn` command line: one thin module per command over the services in fpncli.inference, .evaluation, .training, .analysis, .deploy and .workflows."""
