//! Whom dagsnap trusts over TLS: the system's roots and the configured CA files, verified as
//! rustls verifies them, with one addition git makes too: a server that presents, as its own
//! certificate, exactly a certificate of a configured CA file (a self-signed certificate that
//! is its own CA, `CA:TRUE`, as small internal git servers use) is trusted for the names it
//! holds while it is valid. webpki refuses that certificate (`CaUsedAsEndEntity`); OpenSSL,
//! and so git, accepts it.
//!
//! One `rustls::ClientConfig` serves every HTTPS connection: gix's client (through reqwest) and
//! the idle poll's own connection (`git::listing`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::access::AccessError;

/// The certificates of a CA file (PEM); an error names the file and what is wrong.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, AccessError> {
    let failed = |cause: String| AccessError::CaFile {
        path: path.to_path_buf(),
        cause,
    };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|found| found.collect())
        .map_err(|e| failed(e.to_string()))?;
    if certificates.is_empty() {
        return Err(failed("no certificate in it".into()));
    }
    Ok(certificates)
}

/// A client configuration trusting the system's roots and the certificates of `ca_files`.
pub(crate) fn client_config(ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, AccessError> {
    let mut roots = rustls::RootCertStore::empty();
    let (_added, _ignored) =
        roots.add_parsable_certificates(super::access::system_root_certificates().iter().cloned());
    let mut configured = Vec::new();
    for path in ca_files {
        for certificate in read_ca_file(path)? {
            roots
                .add(certificate.clone())
                .map_err(|e| AccessError::CaFile {
                    path: path.clone(),
                    cause: e.to_string(),
                })?;
            configured.push(certificate);
        }
    }
    let other = |cause: String| AccessError::Tls { cause };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| other(e.to_string()))?;
    let verifier = Arc::new(Verifier { webpki, configured });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| other(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// webpki's verification, and a configured CA's own certificate presented by the server.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of the configured CA files.
    configured: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verified {
            // Byte for byte a certificate the operator configured as trusted: the chain is the
            // trust anchor itself; what is left to check is the name and the time.
            Err(refused)
                if self
                    .configured
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                anchor_is_valid_for(end_entity, server_name, now)?;
                tracing::debug!(%refused, "the server presented a configured CA's own certificate; trusting it for its names, as git does");
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Whether a trusted certificate presented as the server's own holds `server_name` and is
/// within its validity period now.
fn anchor_is_valid_for(
    certificate: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    use rustls::CertificateError;
    let parsed = webpki::EndEntityCert::try_from(certificate)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    parsed
        .verify_is_valid_for_subject_name(server_name)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
    let (not_before, not_after) = validity(certificate.as_ref()).ok_or(
        rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
    )?;
    let now = now.as_secs() as i64;
    if now < not_before {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > not_after {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// The validity period of a DER certificate, as Unix times: `Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity
/// SEQUENCE { notBefore, notAfter }, ... } ... }`.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (certificate, _) = element(der, 0x30)?;
    let (mut tbs, _) = element(certificate, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs, 0xa0)?.1;
    }
    for tag in [0x02, 0x30, 0x30] {
        tbs = element(tbs, tag)?.1; // serialNumber, signature, issuer
    }
    let (validity, _) = element(tbs, 0x30)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

/// One DER element of `tag` at the start of `input`: its content and what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)? as usize;
    let (length, header) = if first < 0x80 {
        (first, 2)
    } else {
        let bytes = first & 0x7f;
        if bytes == 0 || bytes > 4 {
            return None;
        }
        let length = input
            .get(2..2 + bytes)?
            .iter()
            .fold(0usize, |n, b| (n << 8) | *b as usize);
        (length, 2 + bytes)
    };
    let end = header.checked_add(length)?;
    Some((input.get(header..end)?, input.get(end..)?))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) at the start of `input`,
/// as a Unix time, and what follows it.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (text, rest, year_digits) = match input.first()? {
        0x17 => {
            let (text, rest) = element(input, 0x17)?;
            (text, rest, 2)
        }
        0x18 => {
            let (text, rest) = element(input, 0x18)?;
            (text, rest, 4)
        }
        _ => return None,
    };
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let mut year = number(0..year_digits)?;
    if year_digits == 2 {
        // RFC 5280: 50 to 99 are 19xx, 00 to 49 are 20xx.
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let at = year_digits;
    let (month, day) = (number(at..at + 2)?, number(at + 2..at + 4)?);
    let (hour, minute, second) = (
        number(at + 4..at + 6)?,
        number(at + 6..at + 8)?,
        number(at + 8..at + 10)?,
    );
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3_600 + minute * 60 + second, rest))
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 7), 20_794);
    }

    #[test]
    fn both_time_encodings_read() {
        let utc = b"\x17\x0d261207153000Z";
        assert_eq!(time(utc).unwrap().0, 20_794 * 86_400 + 15 * 3_600 + 30 * 60);
        let generalized = b"\x18\x0f20501231235959Z";
        assert_eq!(
            time(generalized).unwrap().0,
            days_from_civil(2050, 12, 31) * 86_400 + 86_399
        );
        assert!(time(b"\x17\x0c261207153000").is_none());
    }
}
