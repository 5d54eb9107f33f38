//! Rendering an error and its causes for a person, on one line.

use std::error::Error;

/// `err` and each of its [`source`](Error::source)s, joined by `": "`, as the
/// project's tools print a failure. A cause whose text the line already
/// contains is left out: several error types name their errno in their own
/// message *and* return it as their source, and printing it twice helps
/// nobody.
///
/// ```
/// use std::io;
/// #[derive(Debug)]
/// struct Bind(io::Error);
/// impl std::fmt::Display for Bind {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "bind failed: {}", self.0)
///     }
/// }
/// impl std::error::Error for Bind {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
/// let e = Bind(io::Error::from_raw_os_error(16));
/// assert_eq!(
///     xsk_broker_protocol::error_chain(&e),
///     "bind failed: Device or resource busy (os error 16)"
/// );
/// ```
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Outer(Inner, bool);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.1 {
                write!(f, "outer: inner text")
            } else {
                write!(f, "outer")
            }
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "inner text")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }
    impl Error for Inner {}

    #[test]
    fn causes_are_joined_once() {
        assert_eq!(error_chain(&Outer(Inner, false)), "outer: inner text");
        assert_eq!(error_chain(&Outer(Inner, true)), "outer: inner text");
    }
}
