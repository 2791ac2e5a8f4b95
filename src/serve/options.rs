//! How the server runs: body limit, request timeout, read deadlines, the discard after a refusal.

use std::time::Duration;

use crate::error::{Error, Result};

/// How the server runs. [`super::ServerState::load`] checks each field against its range.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    /// The largest request body, in bytes (1 to 1 GiB); past it, 413 (a declared length past it
    /// before the body is asked for: no `100 Continue`).
    pub max_body_bytes: usize,
    /// The longest a request may wait for its model (more than 0, at most one hour); past it,
    /// 504.
    pub request_timeout: Duration,
    /// The longest a request's headers may take to arrive, from the connection's start or the
    /// request's first byte (more than 0, at most one hour); past it the connection is closed.
    pub header_timeout: Duration,
    /// The longest a request's body may take to arrive once its headers have (more than 0, at
    /// most one hour); past it, 408 and the connection is closed.
    pub body_timeout: Duration,
    /// The longest a kept-alive connection may sit idle between requests (more than 0, at most
    /// one hour); past it the connection is closed.
    pub idle_timeout: Duration,
    /// After refusing a body unread (413), the most bytes of it read and discarded before the
    /// connection closes (0 to 1 GiB; within `body_timeout`), so that a client which sends its
    /// whole body before reading sees the 413 rather than a reset.
    pub discard_after_refusal_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            discard_after_refusal_bytes: 64 << 20,
        }
    }
}

impl ServerOptions {
    /// The longest any of the durations may be: one hour.
    pub const MAX_DURATION: Duration = Duration::from_secs(3600);
    /// The largest `max_body_bytes` and `discard_after_refusal_bytes`: 1 GiB.
    pub const MAX_BYTES: usize = 1 << 30;

    /// Checks every field against its range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |details: String| {
            Err(Error::InvalidArgument {
                op: "ServerOptions",
                details,
            })
        };
        if self.max_body_bytes == 0 || self.max_body_bytes > Self::MAX_BYTES {
            return invalid(format!(
                "max_body_bytes must be in 1..=2^30, got {}",
                self.max_body_bytes
            ));
        }
        if self.discard_after_refusal_bytes > Self::MAX_BYTES {
            return invalid(format!(
                "discard_after_refusal_bytes must be at most 2^30, got {}",
                self.discard_after_refusal_bytes
            ));
        }
        for (name, d) in [
            ("request_timeout", self.request_timeout),
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() || d > Self::MAX_DURATION {
                return invalid(format!("{name} must be in (0, 1 h], got {d:?}"));
            }
        }
        Ok(())
    }
}
