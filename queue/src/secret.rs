//! Secrets: made from the OS's random source, compared in constant time, so that how long a
//! refusal takes says nothing about the secret.

use subtle::ConstantTimeEq;

/// `bytes` random bytes from the OS, as lowercase hex (twice as many characters).
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether two secrets are equal, in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
