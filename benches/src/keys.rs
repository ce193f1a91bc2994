//! Keys and values of a run: keys are numbers of the key space written as
//! zero-padded decimals of `--key-size` bytes (readable with etcdctl, and
//! sorted as numbers); the value is one random string shared by every write.

use bytes::Bytes;
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::options::Options;

#[derive(Debug, Clone)]
pub struct KeySpace {
    size: u64,
    key_size: usize,
    sequential: bool,
}

impl KeySpace {
    pub fn new(options: &Options) -> Self {
        Self {
            size: options.key_space_size,
            key_size: options.key_size,
            sequential: options.sequential_keys,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The key number the `index`-th request of the run uses.
    pub fn pick(&self, index: u64) -> u64 {
        if self.sequential {
            index % self.size
        } else {
            rand::random_range(0..self.size)
        }
    }

    /// Key number `n`, which must be below the key space size.
    pub fn key(&self, n: u64) -> Bytes {
        debug_assert!(n < self.size);
        Bytes::from(format!("{n:0width$}", width = self.key_size))
    }

    /// The key the `index`-th request of the run uses.
    pub fn key_for(&self, index: u64) -> Bytes {
        self.key(self.pick(index))
    }
}

/// A random printable value of `size` bytes.
pub fn value(size: usize) -> Bytes {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(size)
        .collect::<Vec<u8>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(size: u64, key_size: usize, sequential: bool) -> KeySpace {
        KeySpace {
            size,
            key_size,
            sequential,
        }
    }

    #[test]
    fn keys_are_padded_decimals() {
        let keys = space(1000, 8, true);
        assert_eq!(keys.key(42), Bytes::from_static(b"00000042"));
        assert_eq!(keys.key_for(1042), Bytes::from_static(b"00000042"));
    }

    #[test]
    fn random_keys_stay_in_the_space() {
        let keys = space(3, 1, false);
        assert!((0..100).all(|i| keys.pick(i) < 3));
        assert_eq!(value(5).len(), 5);
    }
}
