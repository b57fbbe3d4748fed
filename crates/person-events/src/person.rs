//! Value objects of the Person domain.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies one person (the aggregate). Serialized as `{"id": "<uuid>"}`, the shape
/// the week-1 system stored.
///
/// ```
/// use person_events::PersonId;
/// let id = PersonId::new();
/// assert_eq!(id.to_string().parse::<PersonId>().unwrap(), id);
/// assert_eq!(serde_json::to_value(id).unwrap()["id"], id.to_string());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PersonId {
    id: Uuid,
}

impl PersonId {
    /// A fresh, time-ordered (UUID v7) person id.
    pub fn new() -> Self {
        Self { id: Uuid::now_v7() }
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(id: Uuid) -> Self {
        Self { id }
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.id
    }
}

impl Default for PersonId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.id.hyphenated(), f)
    }
}

impl FromStr for PersonId {
    type Err = person_metadata::IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Re-use the metadata crate's parser for one consistent error.
        s.parse::<person_metadata::EventId>()
            .map(|id| Self::from_uuid(*id.as_uuid()))
    }
}

impl From<Uuid> for PersonId {
    fn from(id: Uuid) -> Self {
        Self { id }
    }
}

/// The longest name part accepted, in characters.
pub const MAX_NAME_PART_CHARS: usize = 200;

/// Which part of a name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameField {
    /// `given_name`.
    Given,
    /// One of `middle_names`.
    Middle,
    /// `family_name`.
    Family,
    /// `preferred_name`.
    Preferred,
    /// `honorific`.
    Honorific,
    /// `suffix`.
    Suffix,
}

impl NameField {
    /// The JSON field name.
    pub fn as_str(self) -> &'static str {
        match self {
            NameField::Given => "given_name",
            NameField::Middle => "middle_names",
            NameField::Family => "family_name",
            NameField::Preferred => "preferred_name",
            NameField::Honorific => "honorific",
            NameField::Suffix => "suffix",
        }
    }
}

/// Why a name part was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameErrorKind {
    /// Empty after trimming white space.
    Empty,
    /// Longer than [`MAX_NAME_PART_CHARS`].
    TooLong,
    /// Contains a control character.
    ControlCharacter,
}

/// A name part failed validation. Names the field and the fix.
///
/// ```
/// use person_events::{NameErrorKind, NameField, PersonName};
/// let err = PersonName::new("  ", None, "Doe").unwrap_err();
/// assert_eq!((err.field(), err.kind()), (NameField::Given, NameErrorKind::Empty));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {}: {}", field.as_str(), match kind {
    NameErrorKind::Empty => "must not be empty or only white space".to_owned(),
    NameErrorKind::TooLong => format!("must be at most {MAX_NAME_PART_CHARS} characters"),
    NameErrorKind::ControlCharacter => "must not contain control characters".to_owned(),
})]
pub struct NameError {
    field: NameField,
    kind: NameErrorKind,
}

impl NameError {
    /// The field at fault.
    pub fn field(&self) -> NameField {
        self.field
    }

    /// What is wrong with it.
    pub fn kind(&self) -> NameErrorKind {
        self.kind
    }
}

fn clean(field: NameField, raw: &str) -> Result<String, NameError> {
    let trimmed = raw.trim();
    let err = |kind| NameError { field, kind };
    if trimmed.is_empty() {
        return Err(err(NameErrorKind::Empty));
    }
    if trimmed.chars().count() > MAX_NAME_PART_CHARS {
        return Err(err(NameErrorKind::TooLong));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(err(NameErrorKind::ControlCharacter));
    }
    Ok(trimmed.to_owned())
}

/// A person's name, with the week-1 fields.
///
/// Constructors validate (trimmed, non-empty, at most [`MAX_NAME_PART_CHARS`]
/// characters, no control characters). Deserialization does not: stored history is
/// read as it was written, so an old event is never rejected for a rule added later.
///
/// ```
/// use person_events::PersonName;
/// let name = PersonName::new("John", None, "Doe")?.with_honorific("Dr.")?;
/// assert_eq!(name.display_name(), "Dr. John Doe");
/// # Ok::<(), person_events::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PersonName {
    /// Given (first) name.
    pub given_name: String,
    /// Family (last) name.
    pub family_name: String,
    /// Middle names, in order.
    #[serde(default)]
    pub middle_names: Vec<String>,
    /// The name the person prefers to be called by.
    #[serde(default)]
    pub preferred_name: Option<String>,
    /// Honorific such as `Dr.`.
    #[serde(default)]
    pub honorific: Option<String>,
    /// Suffix such as `Jr.`.
    #[serde(default)]
    pub suffix: Option<String>,
}

impl PersonName {
    /// A validated name from given, optional middle, and family names.
    pub fn new(
        given_name: impl AsRef<str>,
        middle_name: Option<&str>,
        family_name: impl AsRef<str>,
    ) -> Result<Self, NameError> {
        Ok(Self {
            given_name: clean(NameField::Given, given_name.as_ref())?,
            family_name: clean(NameField::Family, family_name.as_ref())?,
            middle_names: middle_name
                .map(|m| clean(NameField::Middle, m))
                .transpose()?
                .into_iter()
                .collect(),
            preferred_name: None,
            honorific: None,
            suffix: None,
        })
    }

    /// Adds a middle name.
    pub fn with_middle_name(mut self, middle: &str) -> Result<Self, NameError> {
        self.middle_names.push(clean(NameField::Middle, middle)?);
        Ok(self)
    }

    /// Sets the preferred name.
    pub fn with_preferred_name(mut self, preferred: &str) -> Result<Self, NameError> {
        self.preferred_name = Some(clean(NameField::Preferred, preferred)?);
        Ok(self)
    }

    /// Sets the honorific.
    pub fn with_honorific(mut self, honorific: &str) -> Result<Self, NameError> {
        self.honorific = Some(clean(NameField::Honorific, honorific)?);
        Ok(self)
    }

    /// Sets the suffix.
    pub fn with_suffix(mut self, suffix: &str) -> Result<Self, NameError> {
        self.suffix = Some(clean(NameField::Suffix, suffix)?);
        Ok(self)
    }

    /// Checks a name that came from elsewhere (for example deserialized input) against
    /// the constructor's rules.
    pub fn validate(&self) -> Result<(), NameError> {
        clean(NameField::Given, &self.given_name)?;
        clean(NameField::Family, &self.family_name)?;
        for m in &self.middle_names {
            clean(NameField::Middle, m)?;
        }
        for (field, value) in [
            (NameField::Preferred, &self.preferred_name),
            (NameField::Honorific, &self.honorific),
            (NameField::Suffix, &self.suffix),
        ] {
            if let Some(v) = value {
                clean(field, v)?;
            }
        }
        Ok(())
    }

    /// Honorific, given, middle and family names, and suffix, joined by spaces.
    pub fn display_name(&self) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(4 + self.middle_names.len());
        parts.extend(self.honorific.as_deref());
        parts.push(&self.given_name);
        parts.extend(self.middle_names.iter().map(String::as_str));
        parts.push(&self.family_name);
        parts.extend(self.suffix.as_deref());
        parts.join(" ")
    }
}

/// Why two person records were merged.
///
/// ```
/// use person_events::MergeReason;
/// assert_eq!(serde_json::to_string(&MergeReason::UserRequested).unwrap(), "\"UserRequested\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MergeReason {
    /// Both records describe the same identity.
    DuplicateIdentity,
    /// A data-quality fix.
    DataQualityIssue,
    /// The person asked for it.
    UserRequested,
    /// A policy decided it.
    PolicyDetermined,
}

/// The kinds of component a person can have (the week-1 list).
///
/// ```
/// use person_events::ComponentType;
/// let t: ComponentType = serde_json::from_str("\"EmailAddress\"").unwrap();
/// assert_eq!(t, ComponentType::EmailAddress);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum ComponentType {
    EmailAddress,
    PhoneNumber,
    MessagingApp,
    Address,
    Employment,
    ProfessionalAffiliation,
    Project,
    Skill,
    Certification,
    Education,
    SocialProfile,
    Website,
    ProfessionalNetwork,
    Relationship,
    CustomerSegment,
    BehavioralData,
    CommunicationPreferences,
    PrivacyPreferences,
    GeneralPreferences,
    Tag,
    CustomAttribute,
}

impl ComponentType {
    /// Every component type, in declaration order.
    pub const ALL: [ComponentType; 21] = [
        ComponentType::EmailAddress,
        ComponentType::PhoneNumber,
        ComponentType::MessagingApp,
        ComponentType::Address,
        ComponentType::Employment,
        ComponentType::ProfessionalAffiliation,
        ComponentType::Project,
        ComponentType::Skill,
        ComponentType::Certification,
        ComponentType::Education,
        ComponentType::SocialProfile,
        ComponentType::Website,
        ComponentType::ProfessionalNetwork,
        ComponentType::Relationship,
        ComponentType::CustomerSegment,
        ComponentType::BehavioralData,
        ComponentType::CommunicationPreferences,
        ComponentType::PrivacyPreferences,
        ComponentType::GeneralPreferences,
        ComponentType::Tag,
        ComponentType::CustomAttribute,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        let n = PersonName::new("  Ana ", Some(" María "), " García López ").unwrap();
        assert_eq!(n.given_name, "Ana");
        assert_eq!(n.middle_names, vec!["María"]);
        assert_eq!(n.family_name, "García López");
        let long = "x".repeat(MAX_NAME_PART_CHARS + 1);
        let e = PersonName::new("A", None, &long).unwrap_err();
        assert_eq!(
            (e.field(), e.kind()),
            (NameField::Family, NameErrorKind::TooLong)
        );
        assert!(e.to_string().contains("family_name"));
        let e = PersonName::new("A\u{7}", None, "B").unwrap_err();
        assert_eq!(e.kind(), NameErrorKind::ControlCharacter);
        let e = PersonName::new("A", Some(""), "B").unwrap_err();
        assert_eq!(e.field(), NameField::Middle);
        assert!(PersonName::new("李", None, "小龙").is_ok());
    }

    #[test]
    fn validate_applies_constructor_rules_to_decoded_names() {
        let n: PersonName = serde_json::from_str(r#"{"given_name":"","family_name":"X"}"#).unwrap();
        assert_eq!(n.validate().unwrap_err().field(), NameField::Given);
    }
}
