//! Errors with AWS KMS exception names and stable process exit codes.

use std::fmt;

/// The kind of failure. Names and meanings follow AWS KMS exceptions where one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Disabled,
    KmsInvalidState,
    InvalidCiphertext,
    AccessDenied,
    Validation,
    IncorrectKey,
    IncorrectKeyMaterial,
    AlreadyExists,
    UnsupportedOperation,
    /// The passphrase or root key does not unlock the key store.
    WrongPassphrase,
    /// The key store is missing, unreadable or damaged.
    KeyStore,
    /// The audit log failed verification.
    AuditInvalid,
    /// fsck found problems in a cipher directory.
    FsckProblems,
    /// Stopped by Ctrl-C (or SIGTERM) between two items; a rerun continues.
    Interrupted,
    /// The key's usage or spec does not allow the requested algorithm or operation.
    InvalidKeyUsage,
    /// Verify: the signature does not match.
    InvalidSignature,
    /// VerifyMac: the MAC does not match.
    InvalidMac,
    /// A remote key service could not be reached, or kept failing after retries.
    Unavailable,
    /// ImportKeyMaterial: the import token is past its 24 hours.
    ExpiredImportToken,
    /// ImportKeyMaterial: the import token is not one issued for this key.
    InvalidImportToken,
    Internal,
}

impl ErrorKind {
    /// The exception name, as AWS KMS spells it where it has one.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NotFoundException",
            ErrorKind::Disabled => "DisabledException",
            ErrorKind::KmsInvalidState => "KMSInvalidStateException",
            ErrorKind::InvalidCiphertext => "InvalidCiphertextException",
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::Validation => "ValidationException",
            ErrorKind::IncorrectKey => "IncorrectKeyException",
            ErrorKind::IncorrectKeyMaterial => "IncorrectKeyMaterialException",
            ErrorKind::AlreadyExists => "AlreadyExistsException",
            ErrorKind::UnsupportedOperation => "UnsupportedOperationException",
            ErrorKind::WrongPassphrase => "WrongPassphraseException",
            ErrorKind::KeyStore => "KeyStoreException",
            ErrorKind::AuditInvalid => "AuditLogInvalidException",
            ErrorKind::FsckProblems => "FsckProblemsFoundException",
            ErrorKind::Interrupted => "InterruptedException",
            ErrorKind::InvalidKeyUsage => "InvalidKeyUsageException",
            ErrorKind::InvalidSignature => "KMSInvalidSignatureException",
            ErrorKind::InvalidMac => "KMSInvalidMacException",
            ErrorKind::Unavailable => "DependencyTimeoutException",
            ErrorKind::ExpiredImportToken => "ExpiredImportTokenException",
            ErrorKind::InvalidImportToken => "InvalidImportTokenException",
            ErrorKind::Internal => "KMSInternalException",
        }
    }

    /// Stable exit code of the `kmsfs` binary for this kind (see README).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::NotFound => 10,
            ErrorKind::Disabled => 11,
            ErrorKind::KmsInvalidState => 12,
            ErrorKind::InvalidCiphertext => 13,
            ErrorKind::AccessDenied => 14,
            ErrorKind::Validation => 15,
            ErrorKind::IncorrectKey => 16,
            ErrorKind::IncorrectKeyMaterial => 17,
            ErrorKind::AlreadyExists => 18,
            ErrorKind::UnsupportedOperation => 19,
            ErrorKind::WrongPassphrase => 20,
            ErrorKind::KeyStore => 21,
            ErrorKind::AuditInvalid => 22,
            ErrorKind::FsckProblems => 23,
            ErrorKind::InvalidKeyUsage => 24,
            ErrorKind::InvalidSignature => 25,
            ErrorKind::InvalidMac => 26,
            ErrorKind::Unavailable => 27,
            ErrorKind::ExpiredImportToken => 28,
            ErrorKind::InvalidImportToken => 29,
            // The shell's code for a command ended by SIGINT.
            ErrorKind::Interrupted => 130,
        }
    }

    pub const ALL: [ErrorKind; 22] = [
        ErrorKind::NotFound,
        ErrorKind::Disabled,
        ErrorKind::KmsInvalidState,
        ErrorKind::InvalidCiphertext,
        ErrorKind::AccessDenied,
        ErrorKind::Validation,
        ErrorKind::IncorrectKey,
        ErrorKind::IncorrectKeyMaterial,
        ErrorKind::AlreadyExists,
        ErrorKind::UnsupportedOperation,
        ErrorKind::WrongPassphrase,
        ErrorKind::KeyStore,
        ErrorKind::AuditInvalid,
        ErrorKind::FsckProblems,
        ErrorKind::Interrupted,
        ErrorKind::InvalidKeyUsage,
        ErrorKind::InvalidSignature,
        ErrorKind::InvalidMac,
        ErrorKind::Unavailable,
        ErrorKind::ExpiredImportToken,
        ErrorKind::InvalidImportToken,
        ErrorKind::Internal,
    ];
}

/// An error with its kind and a message meant for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    pub kind: ErrorKind,
    pub message: String,
}

impl KmsError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        KmsError {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn validation(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, m)
    }
    pub fn invalid_ciphertext(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidCiphertext, m)
    }
    pub fn invalid_state(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::KmsInvalidState, m)
    }
    pub fn keystore(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::KeyStore, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }
    /// An I/O failure on `what` (a path or a description) in the key store.
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Self {
        Self::keystore(format!("{what}: {e}"))
    }
}

impl KmsError {
    /// A key whose scheduled deletion destroyed its material (NotFound, as AWS, but known to
    /// have existed): data under it is crypto-shredded rather than damaged.
    pub fn is_deleted_key(&self) -> bool {
        self.kind == ErrorKind::NotFound && self.message.contains(DELETED_MARK)
    }
}

/// The phrase the KMS uses for keys whose material was destroyed (see `is_deleted_key`).
pub const DELETED_MARK: &str = "its key material is destroyed";

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for KmsError {}

pub type Result<T, E = KmsError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn exit_codes_and_names_are_unique() {
        let codes: HashSet<i32> = ErrorKind::ALL.iter().map(|k| k.exit_code()).collect();
        let names: HashSet<&str> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert!(
            !codes.contains(&0) && !codes.contains(&2),
            "0 is success, 2 is usage"
        );
    }
}
