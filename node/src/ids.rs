//! Random identifiers: node ids, secrets, container and exec ids.

/// `n` random bytes as hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    hex::encode(bytes)
}

/// A container's or exec's id: 32 random bytes as hex, as Docker's are.
pub(crate) fn new_id() -> String {
    random_hex(32)
}
