"""Helpers for tests/test_catalogue.py: evasions applied to real-stack bytes, and replays through a bundled profile.

`tls` re-shapes real ClientHellos the way evasion tools and old clients did (an extension inserted with every
length fixed: padding, ESNI); `fet` builds first packets for the GF-1 exemptions and a real Shadowsocks-AEAD first
packet, with an exemption check written independently of `dpi._extract`; `replay` feeds conversations to a
`Censor` loaded from rules/*.yaml and scales a profile's timers with `dataclasses.replace`.
"""
