//! Key and value generation, as etcd's `benchmark`: a key is `--key-size` bytes, zero
//! filled, starting with the Go `binary.PutVarint` (zig-zag varint) encoding of its
//! number in `[0, --key-space-size)`; with `--sequential-keys` request i uses number
//! `i % key-space-size`, otherwise a uniformly random one. `--prefix` (ours) is put in
//! front of every key so runs can keep to a part of the keyspace.

use rand::Rng;

/// Go's `binary.PutVarint`: zig-zag, then LEB128. Returns the bytes.
pub fn put_varint(x: i64) -> Vec<u8> {
    let mut ux = (x as u64) << 1;
    if x < 0 {
        ux = !ux;
    }
    let mut out = Vec::with_capacity(10);
    while ux >= 0x80 {
        out.push((ux as u8) | 0x80);
        ux >>= 7;
    }
    out.push(ux as u8);
    out
}

#[derive(Clone, Debug)]
pub struct KeyGen {
    pub prefix: Vec<u8>,
    pub key_size: usize,
    pub key_space_size: u64,
    pub sequential: bool,
}

impl KeyGen {
    /// Checks that every key number fits in `key_size` bytes (etcd's tool would panic).
    pub fn new(
        prefix: &[u8],
        key_size: usize,
        key_space_size: u64,
        sequential: bool,
    ) -> Result<KeyGen, String> {
        if key_space_size == 0 {
            return Err(format!(
                "expected positive --key-space-size, got ({key_space_size})"
            ));
        }
        let need = put_varint((key_space_size - 1) as i64).len();
        if key_size < need {
            return Err(format!(
                "--key-size {key_size} is too small for --key-space-size {key_space_size} (needs {need} bytes)"
            ));
        }
        Ok(KeyGen {
            prefix: prefix.to_vec(),
            key_size,
            key_space_size,
            sequential,
        })
    }

    /// The key with number `n` (taken modulo the key space).
    pub fn key_n(&self, n: u64) -> Vec<u8> {
        let n = n % self.key_space_size;
        let mut k = Vec::with_capacity(self.prefix.len() + self.key_size);
        k.extend_from_slice(&self.prefix);
        let v = put_varint(n as i64);
        k.extend_from_slice(&v);
        k.resize(self.prefix.len() + self.key_size, 0);
        k
    }

    /// The key of request `i`: sequential or random.
    pub fn key(&self, i: u64, rng: &mut impl Rng) -> Vec<u8> {
        if self.sequential {
            self.key_n(i)
        } else {
            self.key_n(rng.random_range(0..self.key_space_size))
        }
    }
}

/// `n` random bytes (etcd uses random values).
pub fn rand_bytes(n: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// The end of the range of all keys with this prefix (etcd's `GetPrefixRangeEnd`);
/// `[0]` (every key) for an empty prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A value of `size` bytes (at least 8) whose first 8 bytes are `idx` big-endian, so a
/// watcher can tell which put produced an event.
pub fn indexed_value(idx: u64, size: usize) -> Vec<u8> {
    let mut v = idx.to_be_bytes().to_vec();
    v.resize(size.max(8), b'x');
    v
}

pub fn value_index(v: &[u8]) -> Option<u64> {
    v.get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    #[test]
    fn varint_matches_go() {
        // Values from Go's encoding/binary.PutVarint.
        assert_eq!(put_varint(0), vec![0x00]);
        assert_eq!(put_varint(1), vec![0x02]);
        assert_eq!(put_varint(-1), vec![0x01]);
        assert_eq!(put_varint(63), vec![0x7e]);
        assert_eq!(put_varint(64), vec![0x80, 0x01]);
        assert_eq!(put_varint(300), vec![0xd8, 0x04]);
        assert_eq!(put_varint(i64::MAX).len(), 10);
    }

    #[test]
    fn keys_have_fixed_size_and_prefix() {
        let g = KeyGen::new(b"bench/", 8, 1000, true).unwrap();
        for i in [0u64, 1, 63, 64, 999, 1000, 12345] {
            let k = g.key_n(i);
            assert_eq!(k.len(), 6 + 8);
            assert!(k.starts_with(b"bench/"));
        }
        assert_eq!(g.key_n(0), b"bench/\0\0\0\0\0\0\0\0".to_vec());
        assert_eq!(g.key_n(1000), g.key_n(0), "numbers wrap at the key space");
        let distinct: HashSet<Vec<u8>> = (0..1000).map(|i| g.key_n(i)).collect();
        assert_eq!(distinct.len(), 1000);
    }

    #[test]
    fn sequential_and_random() {
        let mut rng = SmallRng::seed_from_u64(1);
        let g = KeyGen::new(b"", 8, 10, true).unwrap();
        let seq: Vec<_> = (0..20).map(|i| g.key(i, &mut rng)).collect();
        assert_eq!(seq[3], g.key_n(3));
        assert_eq!(seq[13], g.key_n(3));
        let g = KeyGen::new(b"", 8, 10, false).unwrap();
        let mut seen = HashSet::new();
        for i in 0..2000 {
            let k = g.key(i, &mut rng);
            assert!((0..10).any(|n| g.key_n(n) == k));
            seen.insert(k);
        }
        assert_eq!(seen.len(), 10, "random keys cover the key space");
        let g = KeyGen::new(b"", 8, 1, false).unwrap();
        assert_eq!(g.key(5, &mut rng), vec![0u8; 8], "etcd's default: one key");
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(KeyGen::new(b"", 8, 0, false).is_err());
        assert!(KeyGen::new(b"", 1, 64, false).is_ok());
        assert!(KeyGen::new(b"", 1, 65, false).is_err());
        assert!(KeyGen::new(b"", 2, 65, false).is_ok());
    }

    #[test]
    fn prefix_end_and_values() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        let v = indexed_value(42, 32);
        assert_eq!(v.len(), 32);
        assert_eq!(value_index(&v), Some(42));
        assert_eq!(indexed_value(7, 2).len(), 8);
        let mut rng = SmallRng::seed_from_u64(2);
        assert_eq!(rand_bytes(17, &mut rng).len(), 17);
    }
}
