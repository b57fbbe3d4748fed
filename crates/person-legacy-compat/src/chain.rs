//! The upcaster chain: JSON steps keyed by (event variant, schema version).
//!
//! An envelope written at schema version `n` is brought to the current version by
//! applying the step registered for `(variant, n)`, then `(variant, n + 1)`, and so on.
//! A step works on the event object (`{"event_type": .., "data": {..}}`) and may rename
//! the variant. Introducing schema version 3 later means: bump `SCHEMA_VERSION`, and
//! register one step per variant from version 2 (an identity step where nothing changed).
//!
//! Version 1 is the week-1 envelope (no `schema_version` field). Its event shapes are the
//! current ones, so the default chain registers an identity step for each week-1 variant;
//! going through the chain keeps one path for every older version.
//!
//! ```
//! use person_legacy_compat::UpcasterChain;
//! use person_events::codec::DecodeErrorKind;
//!
//! // A future world with version 3, where Created renames `source` to `origin`.
//! let mut chain = UpcasterChain::new(3);
//! chain.register("Created", 2, |event| {
//!     let data = event.get_mut("data").and_then(|d| d.as_object_mut()).ok_or("no data")?;
//!     let source = data.remove("source").ok_or("no source")?;
//!     data.insert("origin".into(), source);
//!     Ok(())
//! });
//! let mut event = serde_json::json!({"event_type": "Created", "data": {"source": "api"}});
//! chain.upcast(&mut event, 2).unwrap();
//! assert_eq!(event["data"]["origin"], "api");
//!
//! // A variant without a step is an error, never a silent pass-through; so is a version
//! // newer than the chain knows.
//! let err = chain.upcast(&mut serde_json::json!({"event_type": "Archived"}), 2).unwrap_err();
//! assert_eq!(err.kind(), DecodeErrorKind::UnknownEventType);
//! let err = chain.upcast(&mut event, 4).unwrap_err();
//! assert_eq!(err.kind(), DecodeErrorKind::UnsupportedSchemaVersion);
//! ```

use std::collections::HashMap;
use std::fmt;

use person_events::codec::{DecodeError, DecodeErrorKind, SCHEMA_VERSION};
use serde_json::Value;

/// One upcasting step: rewrites an event object from version `n` to `n + 1`. The error
/// is a human-readable reason.
pub type UpcastStep = Box<dyn Fn(&mut Value) -> Result<(), String> + Send + Sync>;

/// The variants the week-1 system wrote in its envelopes.
pub const WEEK1_VARIANTS: [&str; 14] = [
    "Created",
    "Activated",
    "Suspended",
    "Archived",
    "NameUpdated",
    "BirthDateSet",
    "DeathRecorded",
    "ComponentAdded",
    "ComponentUpdated",
    "ComponentRemoved",
    "PersonMerged",
    "LocationAssigned",
    "EmploymentAdded",
    "IdentityLinked",
];

/// Upcasting steps keyed by (variant, from-version), up to a target version.
pub struct UpcasterChain {
    target: u32,
    steps: HashMap<(String, u32), UpcastStep>,
}

impl fmt::Debug for UpcasterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("UpcasterChain")
            .field("target", &self.target)
            .field("steps", &keys)
            .finish()
    }
}

impl UpcasterChain {
    /// An empty chain that upcasts to `target`.
    pub fn new(target: u32) -> Self {
        Self {
            target,
            steps: HashMap::new(),
        }
    }

    /// The version this chain brings events to.
    pub fn target_version(&self) -> u32 {
        self.target
    }

    /// Registers the step from `from_version` to `from_version + 1` for `variant`,
    /// replacing any earlier one.
    pub fn register(
        &mut self,
        variant: &str,
        from_version: u32,
        step: impl Fn(&mut Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.steps
            .insert((variant.to_owned(), from_version), Box::new(step));
        self
    }

    /// Brings `event` (an event object) from `from_version` to the target version.
    pub fn upcast(&self, event: &mut Value, from_version: u32) -> Result<(), DecodeError> {
        if from_version == 0 || from_version > self.target {
            return Err(DecodeError::new(
                DecodeErrorKind::UnsupportedSchemaVersion,
                format!(
                    "schema_version {from_version}; this build reads 1 to {}",
                    self.target
                ),
            ));
        }
        let mut version = from_version;
        while version < self.target {
            let variant = event
                .get("event_type")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    DecodeError::new(DecodeErrorKind::MissingField, "`event.event_type`")
                })?
                .to_owned();
            let step = self.steps.get(&(variant.clone(), version)).ok_or_else(|| {
                if self.steps.keys().any(|(v, _)| *v == variant) {
                    DecodeError::new(
                        DecodeErrorKind::UnsupportedSchemaVersion,
                        format!("no upcaster for `{variant}` at schema_version {version}"),
                    )
                } else {
                    DecodeError::new(
                        DecodeErrorKind::UnknownEventType,
                        format!(
                            "`{variant}` is not a known event type at schema_version {version}"
                        ),
                    )
                }
            })?;
            step(event).map_err(|why| {
                DecodeError::new(
                    DecodeErrorKind::InvalidField,
                    format!("upcasting `{variant}` from schema_version {version}: {why}"),
                )
            })?;
            version += 1;
        }
        Ok(())
    }
}

impl Default for UpcasterChain {
    /// The chain for this build: week-1 envelopes (version 1) to the current version.
    fn default() -> Self {
        let mut chain = Self::new(SCHEMA_VERSION);
        for variant in WEEK1_VARIANTS {
            chain.register(variant, 1, |_| Ok(()));
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A chain to version 3 whose steps leave a trace in the event.
    fn chain() -> UpcasterChain {
        let mut chain = UpcasterChain::new(3);
        for from in [1, 2] {
            chain.register("Created", from, move |event| {
                let trail = event["trail"].as_array_mut().ok_or("no trail")?;
                trail.push(json!(from));
                Ok(())
            });
        }
        chain
    }

    #[test]
    fn each_step_from_the_stored_version_up_to_the_target_runs_once_in_order() {
        let chain = chain();
        for (from, trail) in [(1, json!([1, 2])), (2, json!([2])), (3, json!([]))] {
            let mut event = json!({"event_type": "Created", "trail": []});
            chain.upcast(&mut event, from).unwrap();
            assert_eq!(event["trail"], trail, "from version {from}");
        }
        for from in [0, 4] {
            let mut event = json!({"event_type": "Created", "trail": []});
            let err = chain.upcast(&mut event, from).unwrap_err();
            assert_eq!(err.kind(), DecodeErrorKind::UnsupportedSchemaVersion);
        }
    }

    #[test]
    fn debug_output_lists_the_target_and_the_registered_steps_in_order() {
        assert_eq!(
            format!("{:?}", chain()),
            r#"UpcasterChain { target: 3, steps: [("Created", 1), ("Created", 2)] }"#
        );
    }
}
