//! The benchmark's workload: a deterministic mix of `SET` (some with a TTL), `HSET`,
//! `INCRBY` and `DEL` over a fixed key space, the same commands for every configuration.
//!
//! Message `n` is a pure function of `n` and the options, so the direct, `replicaof` and
//! Regis runs write exactly the same commands, and any run can be repeated. Each data type
//! has its own keys (`bench:s:*`, `bench:h:*`, `bench:c:*`), so no command meets a key of
//! another type (which Redis would answer `WRONGTYPE`); `DEL` removes string keys.

use bytes::Bytes;

use crate::hub::MessageRequest;

/// Percentages of each command in the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub set: u32,
    pub hset: u32,
    pub incrby: u32,
    pub del: u32,
}

impl std::str::FromStr for Mix {
    type Err = String;

    /// `set=60,hset=20,incrby=15,del=5`: percentages summing to 100.
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            set: 0,
            hset: 0,
            incrby: 0,
            del: 0,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: write the mix as set=60,hset=20,incrby=15,del=5")
            })?;
            let value: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the share must be a whole percentage"))?;
            match name.trim().to_ascii_lowercase().as_str() {
                "set" => mix.set = value,
                "hset" => mix.hset = value,
                "incrby" => mix.incrby = value,
                "del" => mix.del = value,
                other => {
                    return Err(format!(
                        "{other:?} is not in the benchmark's mix: use set, hset, incrby and del"
                    ));
                }
            }
        }
        let total = mix.set + mix.hset + mix.incrby + mix.del;
        if total != 100 {
            return Err(format!("the shares add up to {total}, not 100"));
        }
        Ok(mix)
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "set={},hset={},incrby={},del={}",
            self.set, self.hset, self.incrby, self.del
        )
    }
}

/// Generates the commands of the run.
#[derive(Clone, Debug)]
pub struct Workload {
    pub keys: usize,
    pub mix: Mix,
    /// Percentage of SETs that carry `EX`.
    pub ttl_percent: u32,
    pub ttl_secs: u64,
    pub value: Bytes,
    /// Added to every message number, so that runs on one Redis write fresh keys when asked.
    pub offset: usize,
}

/// splitmix64: a fixed, well-mixed pseudo-random number per message number.
fn mixed(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Workload {
    /// The arguments of command `n`.
    pub fn command(&self, n: usize) -> Vec<Bytes> {
        let n = n + self.offset;
        let random = mixed(n as u64);
        let pick = (random % 100) as u32;
        let key = (random >> 8) as usize % self.keys;
        let mix = self.mix;
        if pick < mix.set {
            let mut args = vec![
                Bytes::from_static(b"SET"),
                Bytes::from(format!("bench:s:{key}")),
                self.value.clone(),
            ];
            if ((random >> 40) % 100) < u64::from(self.ttl_percent) {
                args.push(Bytes::from_static(b"EX"));
                args.push(Bytes::from(self.ttl_secs.to_string()));
            }
            args
        } else if pick < mix.set + mix.hset {
            vec![
                Bytes::from_static(b"HSET"),
                Bytes::from(format!("bench:h:{key}")),
                Bytes::from(format!("f{}", (random >> 48) % 8)),
                self.value.clone(),
            ]
        } else if pick < mix.set + mix.hset + mix.incrby {
            vec![
                Bytes::from_static(b"INCRBY"),
                Bytes::from(format!("bench:c:{key}")),
                Bytes::from(((random >> 48) % 10 + 1).to_string()),
            ]
        } else {
            vec![
                Bytes::from_static(b"DEL"),
                Bytes::from(format!("bench:s:{key}")),
            ]
        }
    }

    /// Command `n` as a Regis message of one command.
    pub fn message(&self, n: usize) -> MessageRequest {
        MessageRequest {
            commands: vec![self.command(n)],
            db: 0,
        }
    }

    /// Command `n` for a Redis client.
    pub fn redis_cmd(&self, n: usize) -> redis::Cmd {
        let args = self.command(n);
        let mut cmd = redis::Cmd::new();
        for arg in &args {
            cmd.arg(arg.as_ref());
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            keys: 1000,
            mix: "set=60,hset=20,incrby=15,del=5".parse().expect("valid mix"),
            ttl_percent: 50,
            ttl_secs: 3600,
            value: Bytes::from(vec![b'v'; 200]),
            offset: 0,
        }
    }

    #[test]
    fn the_mix_follows_its_shares() {
        let w = workload();
        let mut counts = std::collections::HashMap::new();
        let mut with_ttl = 0;
        for n in 0..100_000 {
            let args = w.command(n);
            if args.len() == 5 {
                with_ttl += 1;
            }
            *counts.entry(args[0].clone()).or_insert(0u32) += 1;
        }
        let share = |name: &'static [u8]| counts[&Bytes::from_static(name)] as f64 / 1000.0;
        assert!((share(b"SET") - 60.0).abs() < 1.0, "{counts:?}");
        assert!((share(b"HSET") - 20.0).abs() < 1.0, "{counts:?}");
        assert!((share(b"INCRBY") - 15.0).abs() < 1.0, "{counts:?}");
        assert!((share(b"DEL") - 5.0).abs() < 1.0, "{counts:?}");
        let ttl_share = with_ttl as f64 / counts[&Bytes::from_static(b"SET")] as f64;
        assert!((ttl_share - 0.5).abs() < 0.02, "{ttl_share}");
    }

    #[test]
    fn the_same_number_gives_the_same_command() {
        let w = workload();
        assert_eq!(w.command(12345), w.command(12345));
        assert_ne!(w.command(1), w.command(2));
    }

    #[test]
    fn bad_mixes_are_refused_with_the_reason() {
        let err = "set=60,hset=20".parse::<Mix>().expect_err("sums to 80");
        assert!(err.contains("80"), "{err}");
        let err = "lpush=100".parse::<Mix>().expect_err("not in the mix");
        assert!(err.contains("lpush"), "{err}");
        let err = "set=x,hset=100".parse::<Mix>().expect_err("not a number");
        assert!(err.contains("percentage"), "{err}");
    }
}
