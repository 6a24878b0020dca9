"""``--scheduler tls://...``: a real `dask scheduler` and `dask worker` speaking TLS only, with
a CA and certificates made in the test; the job runs through the CLI."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import external_cluster_at, make_files, output_of, write_job

from daskprs.errors import UserInputError
from daskprs.execute.tls import client_security

x509 = pytest.importorskip("cryptography.x509", reason="the test extra installs cryptography")

SCRIPT = """
import os

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem(folder: Path, name: str, cert, key=None) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = folder / name
    if key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    else:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_certificates(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and one certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return (
        _pem(folder, "ca.pem", ca),
        _pem(folder, "cert.pem", cert),
        _pem(folder, "key.pem", cert, key),
    )


def daskprs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DASKPRS_CONNECT_TIMEOUT": "5"},
    )


@pytest.mark.slow
def test_a_job_runs_on_a_tls_cluster_and_bad_certificates_are_user_errors(tmp_path):
    ca, cert, key = make_certificates(tmp_path / "certs", "good")
    other_ca, other_cert, other_key = make_certificates(tmp_path / "other", "other")
    make_files(tmp_path / "data", 6)
    job = write_job(tmp_path, SCRIPT, input_yaml="type: uri_folder\npath: ./data")
    with external_cluster_at(tmp_path, tls=(ca, cert, key)) as address:
        assert address.startswith("tls://127.0.0.1:")
        good = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
        done = daskprs(
            "run", str(job), "--scheduler", address, "--run-dir", "r1", *good, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert ": 2 worker slots, connected in" in done.stderr
        lines = output_of(tmp_path / "r1").read_text().splitlines()
        assert lines == [f"f{i:03d}.txt" for i in range(6)]

        # a certificate another CA signed: the scheduler refuses it (--force-rerun: the
        # unchanged step would be reused, without connecting)
        wrong = ["--tls-ca-file", str(other_ca), "--tls-cert", str(other_cert)]
        wrong += ["--tls-key", str(other_key), "--force-rerun"]
        bad = daskprs(
            "run", str(job), "--scheduler", address, "--run-dir", "r2", *wrong, cwd=tmp_path
        )
        assert bad.returncode == 2, bad.stderr
        assert f"cannot connect to the Dask scheduler at {address} over TLS" in bad.stderr
        assert "--tls-ca-file" in bad.stderr

        # no certificate at all
        none = daskprs("run", str(job), "--scheduler", address, "--run-dir", "r3", cwd=tmp_path)
        assert none.returncode == 2, none.stderr
        assert "uses TLS: give --tls-ca-file" in none.stderr

        # a certificate file that is not there
        gone = [*good[:2], "--tls-cert", str(tmp_path / "nope.pem")]
        missing = daskprs("run", str(job), "--scheduler", address, *gone, cwd=tmp_path)
        assert missing.returncode == 2, missing.stderr
        assert f"--tls-cert {tmp_path / 'nope.pem'}: no such file" in missing.stderr


def test_certificates_come_from_the_dask_config(tmp_path):
    import dask

    ca, cert, key = make_certificates(tmp_path, "cfg")
    tls = {
        "distributed.comm.tls.ca-file": str(ca),
        "distributed.comm.tls.client.cert": str(cert),
        "distributed.comm.tls.client.key": str(key),
    }
    with dask.config.set(tls):
        security = client_security("tls://127.0.0.1:8786")
    assert security.tls_ca_file == str(ca)
    assert security.tls_client_cert == str(cert)
    assert security.tls_client_key == str(key)
    assert security.require_encryption


def test_certificates_without_a_tls_address_are_refused(tmp_path):
    assert client_security("tcp://127.0.0.1:8786") is None
    assert client_security(None) is None
    with pytest.raises(UserInputError, match="--tls-ca-file go with a TLS scheduler address"):
        client_security("tcp://127.0.0.1:8786", ca_file=str(tmp_path / "ca.pem"))
