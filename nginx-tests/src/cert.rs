//! A self-signed RSA certificate for `localhost`.
//!
//! RSA because the TLS 1.2 suites under test are ECDHE-RSA ones; generated once per test process
//! since key generation is the slowest part of starting a test under UML.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};
use std::sync::OnceLock;

/// PEM certificate and PEM private key.
pub struct CertPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

pub fn localhost() -> &'static CertPem {
    static CERT: OnceLock<CertPem> = OnceLock::new();
    CERT.get_or_init(|| generate().expect("generate certificate"))
}

fn generate() -> Result<CertPem, openssl::error::ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "localhost")?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(30)?);
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok(CertPem {
        cert: b.build().to_pem()?,
        key: key.private_key_to_pem_pkcs8()?,
    })
}
