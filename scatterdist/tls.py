"""TLS certificates for a Dask cluster that crosses machines.

``make_certificates(directory)`` writes ``ca.pem`` (a private certificate authority),
``cert.pem`` and ``key.pem`` (one certificate signed by it, for scheduler, workers and
clients alike: Dask checks that the peer's certificate was signed by the CA). Point the
batch scripts at the directory with ``SCATTERDIST_TLS_DIR``, or build a
``distributed.Security`` with :func:`security`. Keep ``key.pem`` private: whoever holds it
can join the cluster and run code on it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

FILES = ("ca.pem", "cert.pem", "key.pem")


def make_certificates(directory: str | os.PathLike, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                      days: int = 365) -> Path:
    """Write ``ca.pem``, ``cert.pem``, ``key.pem`` into ``directory`` (created, mode 0700)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("TLS certificates need the cryptography package: pip install 'scatterdist[tls]'") from exc

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scatterdist cluster CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scatterdist")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (out / "ca.pem").write_bytes(ca.public_bytes(pem))
    (out / "cert.pem").write_bytes(cert.public_bytes(pem))
    key_path = out / "key.pem"
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return out


def security(directory: str | os.PathLike, require_encryption: bool = True):
    """A ``distributed.Security`` using the certificates of :func:`make_certificates`."""
    from distributed import Security

    d = Path(directory)
    missing = [f for f in FILES if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"TLS directory {d} lacks {', '.join(missing)}; create it with `scatterdist tls-certs {d}`")
    ca, cert, key = (str(d / f) for f in FILES)
    return Security(
        tls_ca_file=ca, require_encryption=require_encryption,
        tls_client_cert=cert, tls_client_key=key,
        tls_scheduler_cert=cert, tls_scheduler_key=key,
        tls_worker_cert=cert, tls_worker_key=key,
    )
