"""A throwaway certificate for trying content credentials out (and for the tests): a self-signed
test root and an end-entity signing certificate it issues, made in code with `cryptography`.

Pictures signed with it carry valid signatures that no one else trusts: fine for trying
`charstudio verify`, not for publishing. c2pa refuses a self-signed CA as signer and wants, on the
end-entity certificate: X.509 v3, not a CA, key usage digitalSignature (no keyCertSign), an
extended key usage it allows (emailProtection here; never anyExtendedKeyUsage), an authority key
identifier, and a P-256/384/521 EC, RSA >= 2048 or Ed25519 key (c2pa-rs,
crypto/cose/certificate_profile.rs).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from ..io_utils import atomic_write, ensure_dir


@dataclass(frozen=True)
class TestCertificate:
    """Paths of the PEM files: ``cert`` (signer then root: the chain to sign with), ``key`` (the
    signer's private key) and ``root`` (the root alone: a trust anchor for reading)."""

    __test__ = False  # not a pytest test class
    cert: Path
    key: Path
    root: Path


def make_test_certificate(folder: str | os.PathLike, days: int = 30, name: str = "charstudio test") -> TestCertificate:
    """Write ``c2pa-test-cert.pem``, ``c2pa-test-key.pem`` and ``c2pa-test-root.pem`` into `folder`
    (replacing earlier ones) and return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=days))

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                             crl_sign=not sign, encipher_only=False, decipher_only=False)

    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} root")])
    signer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} signer"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name} (not for publishing)")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(sign=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    signer = (x509.CertificateBuilder().subject_name(signer_name).issuer_name(root_name)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(valid[0]).not_valid_after(valid[1])
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(usage(sign=True), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                             critical=False)
              .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    out = ensure_dir(folder, "folder")
    files = TestCertificate(out / "c2pa-test-cert.pem", out / "c2pa-test-key.pem", out / "c2pa-test-root.pem")
    texts = {files.cert: signer.public_bytes(pem) + root.public_bytes(pem),
             files.key: key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
             files.root: root.public_bytes(pem)}
    for path, data in texts.items():
        atomic_write(path, lambda tmp, d=data: Path(tmp).write_bytes(d), overwrite=True)
    return files
