"""``scatterdist tls-certs``: certificates for a TLS-secured Dask cluster."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from scatterdist.tls import make_certificates

    hosts = tuple(args.host) if args.host else ("localhost", "127.0.0.1")
    out = make_certificates(args.directory, hosts=hosts, days=args.days)
    print(f"wrote {out}/ca.pem, cert.pem, key.pem (keep key.pem private)")
    print(f"use: SCATTERDIST_TLS_DIR={out} sbatch deploy/slurm/scatter.sbatch ...")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tls-certs", help="create TLS certificates for a Dask cluster",
        description="Write a private CA and a certificate/key pair that scheduler, workers and "
        "clients share. Dask accepts only peers whose certificate the CA signed.",
    )
    p.add_argument("directory", help="output directory (created, mode 0700)")
    p.add_argument("--host", action="append", default=None,
                   help="host name or IP the certificate names (repeatable; default localhost, 127.0.0.1)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.set_defaults(func=_run)
