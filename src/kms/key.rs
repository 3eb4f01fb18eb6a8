//! Key metadata and the lifecycle state machine: pure functions, no I/O.

use crate::clock::format_time;
use crate::error::{ErrorKind, KmsError, Result};
use crate::kms::keyspec::{KeySpec, KeyUsage};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

pub const MIN_DELETION_DAYS: u32 = 7;
pub const MAX_DELETION_DAYS: u32 = 30;
pub const DEFAULT_DELETION_DAYS: u32 = 30;
/// AWS accepts 90..=2560 days; shorter periods are allowed here for testing key lifecycles.
pub const MIN_ROTATION_DAYS: u32 = 1;
pub const MAX_ROTATION_DAYS: u32 = 2560;
pub const DEFAULT_ROTATION_DAYS: u32 = 365;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    PendingImport,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Origin {
    AwsKms,
    External,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::AwsKms => "AWS_KMS",
            Origin::External => "EXTERNAL",
        }
    }
}

/// How a key-material version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionSource {
    Initial,
    Imported,
    OnDemandRotation,
    AutomaticRotation,
}

impl VersionSource {
    pub fn rotation_type(self) -> Option<&'static str> {
        match self {
            VersionSource::OnDemandRotation => Some("ON_DEMAND"),
            VersionSource::AutomaticRotation => Some("AUTOMATIC"),
            _ => None,
        }
    }
}

/// One version of a key's material; the material itself is sealed under the key store's root key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyVersion {
    pub number: u32,
    pub created: DateTime<Utc>,
    pub source: VersionSource,
    #[serde(with = "crate::encoding::b64")]
    pub sealed_material: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationSchedule {
    pub period_days: u32,
    pub next_rotation: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: Uuid,
    pub description: String,
    pub created: DateTime<Utc>,
    pub creator_uid: u32,
    pub origin: Origin,
    pub state: KeyState,
    pub deletion_date: Option<DateTime<Utc>>,
    pub versions: Vec<KeyVersion>,
    pub rotation: Option<RotationSchedule>,
    /// The key policy document exactly as put, so `policy get` returns what was given.
    pub policy: String,
    pub tags: BTreeMap<String, String>,
    /// Versions below this no longer decrypt (like Vault's min_decryption_version); 0 = none.
    #[serde(default)]
    pub min_decryption_version: u32,
    /// Absent in records written before asymmetric keys: SYMMETRIC_DEFAULT.
    #[serde(default)]
    pub key_spec: KeySpec,
    #[serde(default)]
    pub key_usage: KeyUsage,
}

/// The resource name of a key, also accepted wherever a key is named.
pub fn key_arn(id: &Uuid) -> String {
    format!("kmsfs:key/{id}")
}

impl KeyRecord {
    pub fn arn(&self) -> String {
        key_arn(&self.id)
    }

    pub fn current_version(&self) -> Option<&KeyVersion> {
        self.versions.last()
    }

    pub fn version(&self, n: u32) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| v.number == n)
    }

    pub fn next_version_number(&self) -> u32 {
        self.versions.last().map_or(1, |v| v.number + 1)
    }

    /// Makes versions below `below` unusable for decryption. The current version cannot go.
    pub fn retire_versions(&mut self, below: u32) -> Result<()> {
        let current = self.current_version().map_or(0, |v| v.number);
        if below > current {
            return Err(KmsError::validation(format!(
                "cannot retire version {current} of key {}: it is current (rotate first)",
                self.id
            )));
        }
        if below <= self.min_decryption_version {
            return Ok(());
        }
        self.min_decryption_version = below;
        Ok(())
    }

    /// Whether `version` may still decrypt.
    pub fn check_version(&self, version: u32) -> Result<()> {
        if version < self.min_decryption_version {
            return Err(KmsError::invalid_state(format!(
                "version {version} of key {} was retired (versions below {} no longer decrypt)",
                self.id, self.min_decryption_version
            )));
        }
        Ok(())
    }

    /// May the key's material be used (Encrypt, Decrypt, GenerateDataKey, ReEncrypt, rotation)?
    pub fn check_usable(&self) -> Result<()> {
        match self.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::new(
                ErrorKind::Disabled,
                format!(
                    "key {} is disabled: `kmsfs key enable {}` restores it",
                    self.id, self.id
                ),
            )),
            KeyState::PendingDeletion => Err(KmsError::invalid_state(format!(
                "key {} is pending deletion on {}: `kmsfs key cancel-deletion {}` stops it",
                self.id,
                self.deletion_date
                    .as_ref()
                    .map_or_else(String::new, format_time),
                self.id
            ))),
            KeyState::PendingImport => Err(KmsError::invalid_state(format!(
                "key {} has no key material yet: `kmsfs key import {} --material-file F`",
                self.id, self.id
            ))),
        }
    }

    fn refuse_state(&self, what: &str) -> KmsError {
        KmsError::invalid_state(format!(
            "cannot {what} key {}: it is {}",
            self.id,
            self.state.as_str()
        ))
    }

    pub fn enable(&mut self) -> Result<()> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = KeyState::Enabled;
                Ok(())
            }
            _ => Err(self.refuse_state("enable")),
        }
    }

    pub fn disable(&mut self) -> Result<()> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = KeyState::Disabled;
                Ok(())
            }
            _ => Err(self.refuse_state("disable")),
        }
    }

    /// Schedules deletion `days` from `now`; returns the deletion date.
    pub fn schedule_deletion(&mut self, days: u32, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        if !(MIN_DELETION_DAYS..=MAX_DELETION_DAYS).contains(&days) {
            return Err(KmsError::validation(format!(
                "pending window of {days} days: it must be {MIN_DELETION_DAYS} to {MAX_DELETION_DAYS}"
            )));
        }
        if self.state == KeyState::PendingDeletion {
            return Err(self.refuse_state("schedule deletion of"));
        }
        let when = now + Duration::days(i64::from(days));
        self.state = KeyState::PendingDeletion;
        self.deletion_date = Some(when);
        Ok(when)
    }

    /// As in AWS, a cancelled deletion leaves the key Disabled (or PendingImport without material).
    pub fn cancel_deletion(&mut self) -> Result<()> {
        if self.state != KeyState::PendingDeletion {
            return Err(self.refuse_state("cancel deletion of"));
        }
        self.deletion_date = None;
        self.state = if self.versions.is_empty() {
            KeyState::PendingImport
        } else {
            KeyState::Disabled
        };
        Ok(())
    }

    pub fn deletion_due(&self, now: DateTime<Utc>) -> bool {
        self.state == KeyState::PendingDeletion && self.deletion_date.is_some_and(|d| d <= now)
    }

    /// Automatic rotation is due: enabled key, schedule set and reached.
    pub fn rotation_due(&self, now: DateTime<Utc>) -> bool {
        self.state == KeyState::Enabled
            && self
                .rotation
                .as_ref()
                .is_some_and(|r| r.next_rotation <= now)
    }

    fn check_rotatable(&self) -> Result<()> {
        if !self.key_spec.rotates() {
            return Err(KmsError::new(
                ErrorKind::UnsupportedOperation,
                format!(
                    "key {} is {}: only symmetric keys rotate",
                    self.id,
                    self.key_spec.as_str()
                ),
            ));
        }
        if self.origin == Origin::External {
            return Err(KmsError::new(
                ErrorKind::UnsupportedOperation,
                format!(
                    "key {} has imported material; kmsfs cannot make new material for it",
                    self.id
                ),
            ));
        }
        Ok(())
    }

    /// Adds a version that becomes current; older versions stay for decryption.
    pub fn add_version(
        &mut self,
        source: VersionSource,
        sealed: Vec<u8>,
        now: DateTime<Utc>,
    ) -> u32 {
        let number = self.next_version_number();
        self.versions.push(KeyVersion {
            number,
            created: now,
            source,
            sealed_material: sealed,
        });
        if let Some(r) = self.rotation.as_mut() {
            r.next_rotation = now + Duration::days(i64::from(r.period_days));
        }
        number
    }

    /// Checks that an on-demand or automatic rotation may happen now.
    pub fn check_rotate(&self) -> Result<()> {
        self.check_rotatable()?;
        self.check_usable()
    }

    pub fn enable_rotation(&mut self, period_days: u32, now: DateTime<Utc>) -> Result<()> {
        if !(MIN_ROTATION_DAYS..=MAX_ROTATION_DAYS).contains(&period_days) {
            return Err(KmsError::validation(format!(
                "rotation period of {period_days} days: it must be {MIN_ROTATION_DAYS} to {MAX_ROTATION_DAYS}"
            )));
        }
        self.check_rotatable()?;
        self.check_usable()?;
        self.rotation = Some(RotationSchedule {
            period_days,
            next_rotation: now + Duration::days(i64::from(period_days)),
        });
        Ok(())
    }

    pub fn disable_rotation(&mut self) -> Result<()> {
        self.check_usable()?;
        self.rotation = None;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn record(state: KeyState, origin: Origin) -> KeyRecord {
        KeyRecord {
            id: Uuid::nil(),
            description: String::new(),
            created: DateTime::UNIX_EPOCH,
            creator_uid: 0,
            origin,
            state,
            deletion_date: None,
            versions: Vec::new(),
            rotation: None,
            policy: String::new(),
            tags: BTreeMap::new(),
            min_decryption_version: 0,
            key_spec: KeySpec::SymmetricDefault,
            key_usage: KeyUsage::EncryptDecrypt,
        }
    }

    #[test]
    fn retired_versions_stop_decrypting() {
        let mut r = record(KeyState::Enabled, Origin::AwsKms);
        r.add_version(VersionSource::Initial, vec![1], t(0));
        assert!(r.retire_versions(2).is_err(), "the current version stays");
        r.add_version(VersionSource::OnDemandRotation, vec![2], t(1));
        r.retire_versions(2).unwrap();
        assert_eq!(
            r.check_version(1).unwrap_err().kind,
            ErrorKind::KmsInvalidState
        );
        r.check_version(2).unwrap();
        r.retire_versions(1).unwrap();
        assert_eq!(r.min_decryption_version, 2, "never lowered");
    }

    fn t(days: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + Duration::days(days)
    }

    #[test]
    fn usable_only_when_enabled() {
        use ErrorKind::*;
        for (s, want) in [
            (KeyState::Enabled, None),
            (KeyState::Disabled, Some(Disabled)),
            (KeyState::PendingDeletion, Some(KmsInvalidState)),
            (KeyState::PendingImport, Some(KmsInvalidState)),
        ] {
            let r = record(s, Origin::AwsKms);
            assert_eq!(r.check_usable().err().map(|e| e.kind), want, "{s:?}");
        }
    }

    #[test]
    fn deletion_lifecycle() {
        let mut r = record(KeyState::Enabled, Origin::AwsKms);
        r.add_version(VersionSource::Initial, vec![1], t(0));
        assert!(r.schedule_deletion(6, t(0)).is_err());
        assert!(r.schedule_deletion(31, t(0)).is_err());
        assert_eq!(r.schedule_deletion(7, t(0)).unwrap(), t(7));
        assert_eq!(r.state, KeyState::PendingDeletion);
        assert!(r.schedule_deletion(7, t(0)).is_err());
        assert!(r.enable().is_err());
        assert!(!r.deletion_due(t(6)));
        assert!(r.deletion_due(t(7)));
        r.cancel_deletion().unwrap();
        assert_eq!(r.state, KeyState::Disabled);
        assert_eq!(r.deletion_date, None);
        assert!(r.cancel_deletion().is_err());
    }

    #[test]
    fn cancel_deletion_without_material_returns_to_pending_import() {
        let mut r = record(KeyState::PendingImport, Origin::External);
        r.schedule_deletion(30, t(0)).unwrap();
        r.cancel_deletion().unwrap();
        assert_eq!(r.state, KeyState::PendingImport);
    }

    #[test]
    fn rotation_schedule() {
        let mut r = record(KeyState::Enabled, Origin::AwsKms);
        r.add_version(VersionSource::Initial, vec![1], t(0));
        assert!(r.enable_rotation(0, t(0)).is_err());
        assert!(r.enable_rotation(2561, t(0)).is_err());
        r.enable_rotation(10, t(0)).unwrap();
        assert!(!r.rotation_due(t(9)));
        assert!(r.rotation_due(t(10)));
        assert_eq!(
            r.add_version(VersionSource::AutomaticRotation, vec![2], t(10)),
            2
        );
        assert!(!r.rotation_due(t(19)));
        assert!(r.rotation_due(t(20)));
        assert_eq!(r.current_version().map(|v| v.number), Some(2));
        r.disable().unwrap();
        assert!(!r.rotation_due(t(100)), "disabled keys do not rotate");
        assert!(r.check_rotate().is_err());
    }

    #[test]
    fn imported_keys_do_not_rotate() {
        let mut r = record(KeyState::Enabled, Origin::External);
        assert_eq!(
            r.check_rotate().unwrap_err().kind,
            ErrorKind::UnsupportedOperation
        );
        assert!(r.enable_rotation(90, t(0)).is_err());
    }
}
