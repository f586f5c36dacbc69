"""RedWeb: a censorship middlebox emulator.

The package is named `dpi` (the product and the command are `redweb`). The compiled per-packet core is
`dpi._core` and the protocol extractors are `dpi._extract`; everything around them is plain typed Python.
"""

__version__ = "0.1.0"
