//! The `Grpc-Timeout` header of a gateway request, as etcd's gateway reads
//! it: the whole call is bounded by it. Past it, a call that has answered
//! nothing yet is answered 504 with DeadlineExceeded "context deadline
//! exceeded" (the gateway's own client gave up), and a stream already
//! answering ends with that error as its last line; the call in
//! process is dropped (a blocked Lock or Campaign deletes its key). A value
//! of 0 is no bound; a malformed one is refused before the call.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

/// The gateway answers this long before the deadline, so its answer beats
/// tonic's own `grpc-timeout` timer, which runs outside the gateway and
/// would answer an HTTP client in gRPC's form.
const MARGIN: Duration = Duration::from_millis(5);
/// The call in process gets this much longer than the gateway waits, so the
/// gateway's answer, not the services', is the one given at the deadline.
const INNER_SLACK: Duration = Duration::from_millis(100);

/// A refused header: etcd's message.
pub fn invalid(value: &[u8]) -> String {
    format!("invalid grpc-timeout: {}", String::from_utf8_lossy(value))
}

/// Parses a `grpc-timeout` value as etcd's gateway takes it: decimal digits
/// then one unit of `H`, `M`, `S`, `m`, `u`, `n`. `Ok(None)` for no bound
/// (0, or too far to represent).
pub fn parse(v: &[u8]) -> Result<Option<Duration>, ()> {
    let (&unit, digits) = v.split_last().ok_or(())?;
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    let n: u64 = std::str::from_utf8(digits)
        .map_err(|_| ())?
        .parse()
        .map_err(|_| ())?;
    let d = match unit {
        b'H' => n.checked_mul(3600).map(Duration::from_secs),
        b'M' => n.checked_mul(60).map(Duration::from_secs),
        b'S' => Some(Duration::from_secs(n)),
        b'm' => Some(Duration::from_millis(n)),
        b'u' => Some(Duration::from_micros(n)),
        b'n' => Some(Duration::from_nanos(n)),
        _ => return Err(()),
    };
    Ok(d.filter(|d| !d.is_zero()))
}

/// The bound of one gateway call.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// When the gateway answers "context deadline exceeded".
    pub answer_at: Instant,
    /// The `grpc-timeout` the call in process gets.
    inner: Duration,
}

impl Deadline {
    /// The request's bound, from its headers at `now`; `Err` holds the
    /// message for a malformed value.
    pub fn from_headers(h: &HeaderMap, now: Instant) -> Result<Option<Deadline>, String> {
        let Some(v) = h.get("grpc-timeout") else {
            return Ok(None);
        };
        let Some(timeout) = parse(v.as_bytes()).map_err(|()| invalid(v.as_bytes()))? else {
            return Ok(None);
        };
        let Some(deadline) = now.checked_add(timeout) else {
            return Ok(None);
        };
        Ok(Some(Deadline {
            answer_at: deadline.checked_sub(MARGIN).unwrap_or(now),
            inner: timeout.saturating_add(INNER_SLACK),
        }))
    }

    /// The `grpc-timeout` header value for the call in process (at most 8
    /// digits, as gRPC allows); `None` when too far off to write.
    pub fn inner_header(&self) -> Option<String> {
        let ms = self.inner.as_millis();
        if ms <= 99_999_999 {
            return Some(format!("{ms}m"));
        }
        let s = self.inner.as_secs();
        (s <= 99_999_999).then(|| format!("{s}S"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(parse(b"1S"), Ok(Some(Duration::from_secs(1))));
        assert_eq!(parse(b"250m"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(parse(b"2H"), Ok(Some(Duration::from_secs(7200))));
        assert_eq!(parse(b"3M"), Ok(Some(Duration::from_secs(180))));
        assert_eq!(parse(b"7u"), Ok(Some(Duration::from_micros(7))));
        assert_eq!(parse(b"9n"), Ok(Some(Duration::from_nanos(9))));
        assert_eq!(parse(b"0S"), Ok(None));
        assert_eq!(parse(b"9999999999999999999H"), Ok(None));
        for bad in [
            &b""[..],
            b"S",
            b"soon",
            b"5x",
            b"-5S",
            b"5 S",
            b"\xff",
            b"99999999999999999999S",
        ] {
            assert_eq!(parse(bad), Err(()), "{bad:?}");
        }
        assert_eq!(invalid(b"soon"), "invalid grpc-timeout: soon");
    }

    #[test]
    fn bounds() {
        let now = Instant::now();
        let mut h = HeaderMap::new();
        assert!(Deadline::from_headers(&h, now).unwrap().is_none());
        h.insert("grpc-timeout", "2S".parse().unwrap());
        let d = Deadline::from_headers(&h, now).unwrap().unwrap();
        assert_eq!(d.answer_at, now + Duration::from_secs(2) - MARGIN);
        assert_eq!(d.inner_header().as_deref(), Some("2100m"));
        h.insert("grpc-timeout", "99999999H".parse().unwrap());
        let far = Deadline::from_headers(&h, now).unwrap();
        assert!(far.is_none_or(|d| d.inner_header().is_none()));
        h.insert("grpc-timeout", "1X".parse().unwrap());
        assert_eq!(
            Deadline::from_headers(&h, now).unwrap_err(),
            "invalid grpc-timeout: 1X"
        );
    }
}
