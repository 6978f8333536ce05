//! Key permission checks, with etcd's interval rules.
//!
//! A permission covers one key (`range_end` empty), `[key, range_end)`, or
//! every key from `key` on (`range_end == [0]`). A request for one key needs a
//! permission covering it; a request for `[key, range_end)` (`range_end ==
//! [0]`: to the end of the keyspace) needs the union of the user's
//! permissions of that kind to cover the whole interval.

use super::{Perm, READ, READWRITE, WRITE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn granted_by(self, perm_type: i32) -> bool {
        match self {
            Access::Read => perm_type == READ || perm_type == READWRITE,
            Access::Write => perm_type == WRITE || perm_type == READWRITE,
        }
    }
}

/// An interval's end: `None` is past every key.
type End<'a> = Option<std::borrow::Cow<'a, [u8]>>;

/// `perm` as a half-open interval `[start, end)`.
fn interval(p: &Perm) -> (&[u8], End<'_>) {
    match p.range_end.as_slice() {
        // One key k: [k, k\0), the smallest interval holding only k.
        [] => {
            let mut end = p.key.clone();
            end.push(0);
            (&p.key, Some(end.into()))
        }
        [0] => (&p.key, None),
        end => (&p.key, Some(end.into())),
    }
}

/// Is `a < b` for interval ends (`None` is the largest)?
fn end_lt(a: &End<'_>, b: &End<'_>) -> bool {
    match (a, b) {
        (_, None) => a.is_some(),
        (None, Some(_)) => false,
        (Some(x), Some(y)) => x < y,
    }
}

/// Do `perms` grant `access` on `[key, range_end)` (etcd's request rules)?
pub fn permitted<'a>(
    perms: impl Iterator<Item = &'a Perm>,
    key: &[u8],
    range_end: &[u8],
    access: Access,
) -> bool {
    let mut perms = perms.filter(|p| access.granted_by(p.perm_type));
    if range_end.is_empty() {
        // One key: any permission holding it (no allocation: this runs on
        // every request of a non-root user).
        return perms.any(|p| match p.range_end.as_slice() {
            [] => p.key == key,
            [0] => p.key.as_slice() <= key,
            end => p.key.as_slice() <= key && key < end,
        });
    }
    let mut ivs: Vec<_> = perms.map(interval).collect();
    let want_end: End<'_> = if range_end == [0] {
        None
    } else {
        Some(range_end.into())
    };
    // Sweep the intervals in start order, extending how far from `key` on
    // they cover without a gap.
    ivs.sort_by(|a, b| a.0.cmp(b.0));
    let mut covered: End<'_> = Some(key.into());
    for (start, end) in ivs {
        if !end_lt(&covered, &want_end) {
            break;
        }
        let Some(c) = &covered else { break };
        if start > c.as_ref() {
            return false;
        }
        if end_lt(&covered, &end) {
            covered = end;
        }
    }
    !end_lt(&covered, &want_end)
}

/// etcd's `isValidPermissionRange`: a key is given, and the range is one
/// key, a non-empty interval, or open-ended.
pub fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    range_end.is_empty() || range_end == [0] || key < range_end
}
