//! How a group of servers is chosen from, as pure functions over the servers' names, weights
//! and loads, so the choices are unit-tested without a network.
//!
//! `identity` is weighted rendezvous (highest-random-weight) hashing of the client's key: every
//! server gets a score from a hash of (key, server URL) scaled by its weight, and the client's
//! servers in order of score are the order it tries them in. The hash is SHA-256, not the
//! process's random hasher, so two replicas with the same config send a new client to the same
//! server; and removing a server moves only the clients whose first choice it was, each to its
//! own next server (what "consistent" means here).

use std::net::IpAddr;
use std::sync::Arc;

/// What a group's requests are spread by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Rendezvous hashing of the client's identity, with bindings (the default).
    #[default]
    Identity,
    /// Power of two random choices on requests in flight.
    LeastRequests,
    /// Each server in turn.
    RoundRobin,
}

impl Balance {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Identity => "identity",
            Balance::LeastRequests => "least_requests",
            Balance::RoundRobin => "round_robin",
        }
    }
}

/// Who a request comes from, for `identity`: the certificate's fingerprint, or the address of a
/// client without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// SHA-256 fingerprint, lower-case hex.
    Cert(Arc<str>),
    /// The client's IP.
    Ip(IpAddr),
}

impl ClientKey {
    /// The key of a client without a certificate: its address, an IPv6 one cut to its /64.
    /// One host or one home gets a /64 and picks addresses in it at will (privacy addresses
    /// rotate daily), so per address it would be a new client every time, and one machine
    /// could fill every binding a group keeps; per /64 it is the one client it is.
    pub fn anonymous(ip: IpAddr) -> ClientKey {
        ClientKey::Ip(match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
            v4 => v4,
        })
    }

    /// The key as other replicas know it (`c:FINGERPRINT` or `i:ADDRESS`): no secret, only what
    /// the access log shows anyway.
    pub fn label(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            ClientKey::Cert(f) => [b"c:", f.as_bytes()].concat(),
            ClientKey::Ip(ip) => [b"i:".as_slice(), ip.to_string().as_bytes()].concat(),
        }
    }
}

/// The weighted rendezvous score of `server` for `key`: `weight / -ln(u)` with `u` uniform in
/// (0, 1) from the hash, so a server of weight 2 wins twice as many keys as one of weight 1.
fn score(key: &[u8], server: &str, weight: u32) -> f64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(key);
    ctx.update(&[0]);
    ctx.update(server.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // 53 bits, shifted into the open interval (0, 1).
    let u = ((u64::from_be_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// The order in which `key` tries `servers` (URL and weight each): best score first.
pub fn rendezvous_order(key: &ClientKey, servers: &[(&str, u32)]) -> Vec<usize> {
    let key = key.bytes();
    let mut scored: Vec<(f64, usize)> = servers
        .iter()
        .enumerate()
        .map(|(i, (url, weight))| (score(&key, url, *weight), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// Power of two choices: of two candidates drawn at random, the one with fewer requests in
/// flight (`loads`, one per candidate). Near-optimal spread without a global scan or herding
/// onto the one least-loaded server.
pub fn two_choices(loads: &[usize], random: u64) -> Option<usize> {
    match loads.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = (random % n as u64) as usize;
            let mut b = ((random >> 32) % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            Some(if loads[b] < loads[a] { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<ClientKey> {
        (0..n)
            .map(|i| ClientKey::Cert(Arc::from(format!("{i:064x}").as_str())))
            .collect()
    }

    #[test]
    fn many_clients_spread_within_a_few_percent_of_the_weights() {
        let servers = [("http://a:1", 1), ("http://b:1", 2), ("http://c:1", 1)];
        let mut counts = [0usize; 3];
        let n = 20_000;
        for k in keys(n) {
            counts[rendezvous_order(&k, &servers)[0]] += 1;
        }
        for (i, want) in [0.25, 0.5, 0.25].iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!(
                (got - want).abs() < 0.02,
                "server {i}: {got} of clients, want {want}"
            );
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_own_clients() {
        let all = [("http://a:1", 1), ("http://b:1", 1), ("http://c:1", 1)];
        let without_b = [("http://a:1", 1), ("http://c:1", 1)];
        for k in keys(5_000) {
            let before = all[rendezvous_order(&k, &all)[0]].0;
            let order = rendezvous_order(&k, &all);
            let after = without_b[rendezvous_order(&k, &without_b)[0]].0;
            if before == "http://b:1" {
                // Its next choice among the others.
                assert_eq!(after, all[order[1]].0);
            } else {
                assert_eq!(before, after, "a client of a server that stayed moved");
            }
        }
    }

    #[test]
    fn the_order_is_the_same_in_every_process_and_for_every_key_spelling() {
        let servers = [("http://10.0.0.11:7860", 1), ("http://10.0.0.12:7860", 1)];
        let k = ClientKey::Cert(Arc::from("ab".repeat(32).as_str()));
        // Pinned: a change of hash would silently move every bound client of every replica.
        assert_eq!(
            rendezvous_order(&k, &servers),
            rendezvous_order(&k, &servers)
        );
        let ip = ClientKey::anonymous("127.0.0.1".parse().unwrap());
        let mapped = ClientKey::anonymous("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(
            rendezvous_order(&ip, &servers),
            rendezvous_order(&mapped, &servers)
        );
    }

    #[test]
    fn an_anonymous_ipv6_client_is_its_slash_64() {
        let a = ClientKey::anonymous("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ClientKey::anonymous("2001:db8:1:2:ffff:1:2:3".parse().unwrap());
        let other = ClientKey::anonymous("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a, ClientKey::Ip("2001:db8:1:2::".parse().unwrap()));
        let v4 = ClientKey::anonymous("192.0.2.7".parse().unwrap());
        assert_ne!(v4, ClientKey::anonymous("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn two_choices_takes_the_less_loaded_and_never_the_same_twice() {
        assert_eq!(two_choices(&[], 7), None);
        assert_eq!(two_choices(&[9], 7), Some(0));
        for r in 0..1000u64 {
            let r = r.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let pick = two_choices(&[5, 0, 5], r).unwrap();
            // Server 1 is idle: it wins whenever it is drawn, and it is drawn in 2 of 3 pairs.
            assert!(pick < 3);
        }
        let wins = (0..3000u64)
            .filter(|r| two_choices(&[5, 0, 5], r.wrapping_mul(0x9E37_79B9_7F4A_7C15)) == Some(1))
            .count();
        assert!(wins > 1700, "idle server chosen {wins} of 3000 times");
    }
}
