"""The `portcls` command: the tools built on the SDK (`portcls up`, `ls`, `info`, `watch`,
`send`, `monitor`, `ping`, `play`, `record`, `demo`, `crashtest`, `bench`). Nothing in the
SDK imports this package."""

from ksclient.cli.main import main

__all__ = ["main"]
