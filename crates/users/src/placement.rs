//! Which shard a user lives on: jump consistent hash (Lamping and Veach, 2014) over FNV-1a 64 of
//! the user id.
//!
//! Both halves are fixed functions of their input: no per-process seed (Rust's `RandomState` and
//! Python's `hash()` are salted per process, so a shard chosen with them changes after a restart).
//! Jump hash moves only the keys that must move when a shard is added: going from `n` to `n + 1`
//! shards moves about `1 / (n + 1)` of the users, all of them to the new shard, where
//! `hash % n` moves about `n / (n + 1)` of them. See `docs/sharding.md` for the measured figures.

/// FNV-1a, 64 bits: a fixed, seedless hash of bytes (the same on every machine and every run).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Jump consistent hash: the bucket in `0..buckets` of `key`. `buckets` must be at least 1 (0 is
/// treated as 1).
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let (mut b, mut j) = (-1_i64, 0_i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // The reference implementation's arithmetic, in f64 as published.
        j = ((b + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The shard of user `id` among `shards` shards.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    jump(fnv1a64(id.as_bytes()), shards)
}

/// What lab systems do, kept for comparison only: `hash % shards`.
pub fn modulo_shard_of(id: &str, shards: u32) -> u32 {
    (fnv1a64(id.as_bytes()) % u64::from(shards.max(1))) as u32
}

/// How a layout change from `from` to `to` shards moves ids: `moves[a][b]` ids go from shard `a`
/// to shard `b` (`a != b`), under jump hash and under `hash % n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovePlan {
    /// Shard count before.
    pub from: u32,
    /// Shard count after.
    pub to: u32,
    /// Ids examined.
    pub total: u64,
    /// Jump hash: ids moving from shard `a` (row) to shard `b` (column).
    pub jump: Vec<Vec<u64>>,
    /// `hash % n`: the same table.
    pub modulo: Vec<Vec<u64>>,
}

impl MovePlan {
    /// Plans the move of `ids` from `from` to `to` shards.
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a str>, from: u32, to: u32) -> MovePlan {
        let size = from.max(to).max(1) as usize;
        let mut plan = MovePlan {
            from,
            to,
            total: 0,
            jump: vec![vec![0; size]; size],
            modulo: vec![vec![0; size]; size],
        };
        for id in ids {
            plan.total += 1;
            let (a, b) = (shard_of(id, from), shard_of(id, to));
            plan.jump[a as usize][b as usize] += u64::from(a != b);
            let (a, b) = (modulo_shard_of(id, from), modulo_shard_of(id, to));
            plan.modulo[a as usize][b as usize] += u64::from(a != b);
        }
        plan
    }

    /// Ids that move under jump hash.
    pub fn jump_moved(&self) -> u64 {
        self.jump.iter().flatten().sum()
    }

    /// The plan as text: one line per shard pair that moves under either function, jump hash
    /// beside `hash % n`, then the totals.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let pct = |n: u64| {
            if self.total == 0 {
                0.0
            } else {
                n as f64 * 100.0 / self.total as f64
            }
        };
        let mut out = format!(
            "{} users, {} -> {} shards\n\n{:<12} {:>16} {:>16}\n",
            self.total, self.from, self.to, "move", "jump hash", "hash % n"
        );
        for (a, (jrow, mrow)) in self.jump.iter().zip(&self.modulo).enumerate() {
            for (b, (j, m)) in jrow.iter().zip(mrow).enumerate() {
                if *j > 0 || *m > 0 {
                    let _ = writeln!(out, "{:<12} {j:>16} {m:>16}", format!("{a} -> {b}"));
                }
            }
        }
        let (j, m) = (self.jump_moved(), self.modulo_moved());
        let _ = writeln!(
            out,
            "{:<12} {:>16} {:>16}",
            "total",
            format!("{j} ({:.1}%)", pct(j)),
            format!("{m} ({:.1}%)", pct(m))
        );
        out
    }

    /// Ids that move under `hash % n`.
    pub fn modulo_moved(&self) -> u64 {
        self.modulo.iter().flatten().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids shaped like the ones `auth` makes (UUID v4 text), but reproducible.
    fn ids(n: u32) -> Vec<String> {
        (0..n)
            .map(|i| {
                let h = fnv1a64(&i.to_le_bytes());
                format!(
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    h >> 32,
                    (h >> 16) & 0xffff,
                    h & 0xfff,
                    (h >> 20) & 0xfff,
                    h.rotate_left(17) & 0xffff_ffff_ffff
                )
            })
            .collect()
    }

    #[test]
    fn fnv_matches_the_published_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// The same ids land on the same shards in every process, on every machine, forever: if this
    /// table changes, every deployed user is on the wrong shard.
    #[test]
    fn shards_are_stable_across_processes() {
        let table: [(&str, u32, u32); 8] = [
            // (id, shard of 3, shard of 4)
            ("alice", 0, 3),
            ("bob", 2, 2),
            ("admin", 2, 2),
            ("user-1", 1, 1),
            ("user-2", 0, 0),
            ("0b4e8f52-6d1c-4c1e-9a57-3f1b6c2d9e10", 2, 2),
            ("6f9619ff-8b86-d011-b42d-00c04fc964ff", 2, 2),
            ("ffffffff-ffff-4fff-bfff-ffffffffffff", 2, 3),
        ];
        for (id, of3, of4) in table {
            assert_eq!(
                (shard_of(id, 3), shard_of(id, 4)),
                (of3, of4),
                "{id} moved: the shard function changed"
            );
        }
    }

    #[test]
    fn jump_matches_the_reference_implementation() {
        // The vectors every port of the paper's code checks (Go, Python, C, Elixir).
        for (key, buckets, want) in [
            (1_u64, 1_u32, 0_u32),
            (42, 57, 43),
            (0xDEAD_10CC, 1, 0),
            (0xDEAD_10CC, 666, 361),
            (256, 1024, 520),
            (1, 128, 55),
            (129, 128, 120),
            (u64::MAX, 128, 92),
        ] {
            assert_eq!(jump(key, buckets), want, "jump({key}, {buckets})");
        }
        for key in [1_u64, 42, 0xdead_beef, u64::MAX] {
            for n in 1..50 {
                assert!(jump(key, n) < n);
            }
        }
        // Monotone: a key only ever moves to the newly added bucket.
        for key in (0..10_000_u64).map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            for n in 1..20 {
                let (a, b) = (jump(key, n), jump(key, n + 1));
                assert!(
                    a == b || b == n,
                    "key {key} moved from {a} to {b} going {n}->{}",
                    n + 1
                );
            }
        }
    }

    #[test]
    fn spread_is_within_five_percent_of_even() {
        let ids = ids(100_000);
        for n in [2_u32, 3, 4, 5, 8, 10] {
            let mut counts = vec![0_u32; n as usize];
            for id in &ids {
                counts[shard_of(id, n) as usize] += 1;
            }
            let even = ids.len() as f64 / f64::from(n);
            for (shard, &c) in counts.iter().enumerate() {
                let off = (f64::from(c) - even).abs() / even;
                assert!(
                    off <= 0.05,
                    "{n} shards: shard {shard} has {c} (even {even:.0}, {:.1}% off)",
                    off * 100.0
                );
            }
            println!("{n} shards over 100000 ids: {counts:?}");
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_over_n_plus_one() {
        let ids = ids(100_000);
        for from in [1_u32, 2, 3, 4, 9] {
            let to = from + 1;
            let plan = MovePlan::new(ids.iter().map(String::as_str), from, to);
            let jump_share = plan.jump_moved() as f64 / plan.total as f64;
            let modulo_share = plan.modulo_moved() as f64 / plan.total as f64;
            let ideal = 1.0 / f64::from(to);
            println!(
                "{from} -> {to}: jump moves {:.2}% (ideal {:.2}%), hash % n moves {:.2}%",
                jump_share * 100.0,
                ideal * 100.0,
                modulo_share * 100.0
            );
            assert!(
                (jump_share - ideal).abs() < 0.01,
                "{from}->{to}: {jump_share}"
            );
            // Every jump move goes to the new shard.
            for (a, row) in plan.jump.iter().enumerate() {
                for (b, &count) in row.iter().enumerate() {
                    assert!(
                        count == 0 || b == from as usize,
                        "{count} ids move {a}->{b}"
                    );
                }
            }
            if from > 1 {
                assert!(
                    modulo_share > 0.5,
                    "hash % n should move most ids: {modulo_share}"
                );
            }
        }
    }
}
