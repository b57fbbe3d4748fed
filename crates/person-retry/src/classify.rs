//! Which errors are retried: [`ErrorClass`], the [`Classify`] trait errors implement,
//! and the [`Classifier`]s a [`RetryHandler`](crate::RetryHandler) is built with.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a failure should be treated.
///
/// Serialized (in [`DeadLetter`](crate::DeadLetter)) as `"transient"`, `"permanent"` or
/// `{"retry_after_ms": 1500}`.
///
/// ```
/// use std::time::Duration;
/// use person_retry::ErrorClass;
///
/// assert!(ErrorClass::Transient.is_retryable());
/// assert!(!ErrorClass::Permanent.is_retryable());
/// let later = ErrorClass::RetryAfter(Duration::from_secs(2));
/// assert_eq!(later.retry_after(), Some(Duration::from_secs(2)));
/// assert_eq!(serde_json::to_string(&later).unwrap(), r#"{"retry_after_ms":2000}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "ErrorClassRepr", into = "ErrorClassRepr")]
pub enum ErrorClass {
    /// Worth retrying on the policy's schedule (timeouts, unavailable downstreams).
    Transient,
    /// Retrying cannot help (bad input, a rejected command): fail at once.
    Permanent,
    /// Retry, but not before this delay (a rate limit or a `Retry-After` answer). The
    /// handler waits exactly this long instead of the policy's delay, bounded only by
    /// the policy's time budget; the attempt still counts against `max_attempts`.
    RetryAfter(Duration),
}

impl ErrorClass {
    /// `false` only for [`ErrorClass::Permanent`].
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ErrorClass::Permanent)
    }

    /// The delay asked for by [`ErrorClass::RetryAfter`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ErrorClass::RetryAfter(delay) => Some(*delay),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ErrorClassRepr {
    Transient,
    Permanent,
    RetryAfterMs(u64),
}

impl From<ErrorClassRepr> for ErrorClass {
    fn from(repr: ErrorClassRepr) -> Self {
        match repr {
            ErrorClassRepr::Transient => ErrorClass::Transient,
            ErrorClassRepr::Permanent => ErrorClass::Permanent,
            ErrorClassRepr::RetryAfterMs(ms) => ErrorClass::RetryAfter(Duration::from_millis(ms)),
        }
    }
}

impl From<ErrorClass> for ErrorClassRepr {
    fn from(class: ErrorClass) -> Self {
        match class {
            ErrorClass::Transient => ErrorClassRepr::Transient,
            ErrorClass::Permanent => ErrorClassRepr::Permanent,
            ErrorClass::RetryAfter(delay) => {
                ErrorClassRepr::RetryAfterMs(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            }
        }
    }
}

/// Implemented by error types that know whether they are worth retrying.
///
/// Classification is by type and variant, never by matching message strings.
///
/// ```
/// use person_retry::{Classify, ErrorClass};
///
/// #[derive(Debug)]
/// enum StoreError {
///     Timeout,
///     Invalid,
/// }
///
/// impl Classify for StoreError {
///     fn class(&self) -> ErrorClass {
///         match self {
///             StoreError::Timeout => ErrorClass::Transient,
///             StoreError::Invalid => ErrorClass::Permanent,
///         }
///     }
/// }
///
/// assert_eq!(StoreError::Invalid.class(), ErrorClass::Permanent);
/// ```
pub trait Classify {
    /// The class of this error.
    fn class(&self) -> ErrorClass;
}

impl<T: Classify + ?Sized> Classify for &T {
    fn class(&self) -> ErrorClass {
        (**self).class()
    }
}

impl<T: Classify + ?Sized> Classify for Box<T> {
    fn class(&self) -> ErrorClass {
        (**self).class()
    }
}

impl<T: Classify + ?Sized> Classify for Arc<T> {
    fn class(&self) -> ErrorClass {
        (**self).class()
    }
}

impl Classify for std::io::Error {
    /// Connection-level and timing failures are transient; everything else (not found,
    /// permission denied, invalid data, ...) is permanent.
    fn class(&self) -> ErrorClass {
        use std::io::ErrorKind as K;
        match self.kind() {
            K::TimedOut
            | K::Interrupted
            | K::WouldBlock
            | K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::AddrInUse
            | K::AddrNotAvailable
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::ResourceBusy
            | K::StorageFull
            | K::OutOfMemory => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

/// Decides the [`ErrorClass`] of an error of type `E` for a
/// [`RetryHandler`](crate::RetryHandler).
///
/// Implemented by [`AlwaysTransient`] (the default), [`ByClassify`] (uses the error's
/// [`Classify`] impl) and by every `Fn(&E) -> ErrorClass + Send + Sync` closure.
///
/// ```
/// use person_retry::{AlwaysTransient, ByClassify, Classifier, ErrorClass};
///
/// let closure = |e: &u16| if *e >= 500 { ErrorClass::Transient } else { ErrorClass::Permanent };
/// assert_eq!(closure.classify(&503), ErrorClass::Transient);
/// assert_eq!(closure.classify(&404), ErrorClass::Permanent);
/// assert_eq!(Classifier::<u16>::classify(&AlwaysTransient, &404), ErrorClass::Transient);
///
/// let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
/// assert_eq!(ByClassify.classify(&io), ErrorClass::Transient);
/// ```
pub trait Classifier<E: ?Sized>: Send + Sync {
    /// The class of `error`.
    fn classify(&self, error: &E) -> ErrorClass;
}

/// Treats every error as transient: the seed's behaviour, and the default of
/// [`RetryHandler::new`](crate::RetryHandler::new).
///
/// ```
/// use person_retry::{AlwaysTransient, Classifier, ErrorClass};
/// assert_eq!(AlwaysTransient.classify("anything"), ErrorClass::Transient);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlwaysTransient;

impl<E: ?Sized> Classifier<E> for AlwaysTransient {
    fn classify(&self, _error: &E) -> ErrorClass {
        ErrorClass::Transient
    }
}

/// Uses the error's own [`Classify`] implementation.
///
/// ```
/// use person_retry::{ByClassify, Classifier, ErrorClass};
/// let err = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
/// assert_eq!(ByClassify.classify(&err), ErrorClass::Permanent);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByClassify;

impl<E: Classify + ?Sized> Classifier<E> for ByClassify {
    fn classify(&self, error: &E) -> ErrorClass {
        error.class()
    }
}

impl<E: ?Sized, F> Classifier<E> for F
where
    F: Fn(&E) -> ErrorClass + Send + Sync,
{
    fn classify(&self, error: &E) -> ErrorClass {
        self(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_round_trip() {
        for class in [
            ErrorClass::Transient,
            ErrorClass::Permanent,
            ErrorClass::RetryAfter(Duration::from_millis(1500)),
        ] {
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(serde_json::from_str::<ErrorClass>(&json).unwrap(), class);
        }
        assert_eq!(
            serde_json::to_string(&ErrorClass::Permanent).unwrap(),
            "\"permanent\""
        );
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            Error::from(ErrorKind::ConnectionReset).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            Error::from(ErrorKind::InvalidData).class(),
            ErrorClass::Permanent
        );
        let boxed: Box<Error> = Box::new(Error::from(ErrorKind::TimedOut));
        assert_eq!(boxed.class(), ErrorClass::Transient);
    }
}
