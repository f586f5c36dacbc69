"""The lab's certificate authority: a CA made at lab start and one server certificate for every lab name.

Censors read the SNI, never the certificate (T21-1: "the server certificate never triggers"), so one leaf with
all lab names as subject alternative names is enough, and it keeps the server simple: whatever SNI a client
sends, the same certificate verifies. Clients trust the CA explicitly (`curl --cacert`, `ssl` cafile,
aioquic `load_verify_locations`); nothing is added to the system trust store.

EC P-256 keys: generating them takes milliseconds, so every lab start gets a fresh CA.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class LabCertificates:
    """Paths of the generated files (PEM)."""

    ca_cert: Path
    server_cert: Path  # leaf followed by the CA certificate
    server_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "RedWeb lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def san_entries(names: Iterable[str], addresses: Iterable[str] = ()) -> list[x509.GeneralName]:
    """DNS entries for every name and its subdomains (`*.name`), plus IP entries; duplicates removed."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for n in names:
        n = n.strip().rstrip(".").lower()
        for entry in (n, f"*.{n}"):
            if n and entry not in seen:
                seen.add(entry)
                out.append(x509.DNSName(entry))
    for a in addresses:
        if a and a not in seen:
            seen.add(a)
            out.append(x509.IPAddress(ipaddress.ip_address(a)))
    return out


def make_lab_ca(directory: str | os.PathLike[str], names: Iterable[str], addresses: Iterable[str] = (),
                days: int = 30) -> LabCertificates:
    """Create `ca.pem`, `server.pem` (leaf + CA) and `server.key` in `directory` for `names` and `addresses`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("RedWeb lab CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    sans = san_entries(names, addresses)
    if not sans:
        raise ValueError("the server certificate needs at least one name or address")
    leaf = (x509.CertificateBuilder().subject_name(_name("RedWeb lab server")).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))

    pem = serialization.Encoding.PEM
    certs = LabCertificates(d / "ca.pem", d / "server.pem", d / "server.key")
    _write(certs.ca_cert, ca.public_bytes(pem))
    _write(certs.server_cert, leaf.public_bytes(pem) + ca.public_bytes(pem))
    _write(certs.server_key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), private=True)
    return certs
