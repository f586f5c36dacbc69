"""Whether this machine can run a Mininet lab: the skip condition shared by the lab test suites."""
from __future__ import annotations

import os
import shutil

import pytest

try:
    import mininet.net  # noqa: F401
    HAVE_MININET = True
except ImportError:
    HAVE_MININET = False

needs_lab = pytest.mark.skipif(os.geteuid() != 0 or not HAVE_MININET or shutil.which("mnexec") is None
                               or shutil.which("dnsmasq") is None,
                               reason="needs root, Mininet and the lab's programs (make setup)")
