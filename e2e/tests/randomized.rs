//! Random subnets, prefix lengths, aliases and host numbers, not only the seed's /24s: a mapping
//! bug hides behind equal or round-number prefixes. Each run prints its seed; set
//! `MIRRORNET_E2E_SEED` to replay one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mirrornet_agent::lab::{MIDDLEMAN, Scenario};
use mirrornet_e2e::node::{
    SpecFile, alias_of, apply, assert_same, connect, delete, host_of, require_root, serve, snapshot,
};

/// xorshift64*: enough randomness for test inputs, reproducible from one number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random network's YAML and the two host numbers to test with.
fn random_network(rng: &mut Rng, index: usize) -> (String, [u32; 2]) {
    let ipv6 = index % 3 == 2;
    let sides = if index % 4 == 1 { 3 } else { 2 };
    let (len, bits) = if ipv6 {
        (48 + rng.below(73) as u8, 128u32) // /48 ... /120
    } else {
        (16 + rng.below(14) as u8, 32u32) // /16 ... /29
    };
    let host_bits = bits - u32::from(len);
    // Distinct network numbers for the subnet and every alias.
    let mut prefixes: Vec<u128> = Vec::new();
    while prefixes.len() < 1 + sides {
        let candidate = rng.next() as u128 & ((1u128 << (u32::from(len) - 8).min(64)) - 1);
        if !prefixes.contains(&candidate) {
            prefixes.push(candidate);
        }
    }
    let render = |p: u128| -> IpAddr {
        if ipv6 {
            // fd00::/8 unique-local space.
            let v = (0xfdu128 << 120) | (p << host_bits);
            IpAddr::V6(Ipv6Addr::from(v))
        } else {
            // 10.0.0.0/8.
            let v = (10u32 << 24) | ((p as u32) << host_bits);
            IpAddr::V4(Ipv4Addr::from(v))
        }
    };
    let host_count = if host_bits >= 16 {
        60000
    } else {
        (1u64 << host_bits) - 2
    };
    let mut hosts = [0u32; 2];
    while hosts[0] == hosts[1] || hosts.contains(&1) {
        hosts = [
            1 + rng.below(host_count) as u32,
            1 + rng.below(host_count) as u32,
        ];
    }
    let subnet = render(prefixes[0]);
    let gateway = match subnet {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
    };
    let mut yaml = format!(
        "apiVersion: mirrornet.io/v1alpha1\nkind: MirrorNetwork\nmetadata:\n  name: random-{index}\n\
         spec:\n  subnet: {subnet}/{len}\n  gatewayAddress: {gateway}\n  sides:\n"
    );
    for side in 0..sides {
        yaml.push_str(&format!(
            "    - name: s{side}\n      interface: eth{}\n      aliasPrefix: {}/{len}\n",
            side + 1,
            render(prefixes[1 + side])
        ));
    }
    (yaml, hosts)
}

#[test]
fn random_prefixes_map_every_host_to_its_twin() {
    require_root();
    let seed = std::env::var("MIRRORNET_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("MIRRORNET_E2E_SEED={seed}");
    let mut rng = Rng(seed);
    for index in 0..6 {
        let (yaml, hosts) = random_network(&mut rng, index);
        let context = format!("seed {seed}, network {index}:\n{yaml}");
        let shape: Vec<&str> = yaml
            .lines()
            .filter(|l| l.contains("subnet:") || l.contains("aliasPrefix:"))
            .map(str::trim)
            .collect();
        println!("network {index}: {}; hosts {hosts:?}", shape.join(", "));
        let spec = SpecFile::new(&format!("random{index}"), &yaml);
        let net = spec.networks[0].valid.clone();
        let mut s = Scenario::build(&format!("rnd{index}"), &net, &hosts, false)
            .unwrap_or_else(|e| panic!("{context}\n{e}"));
        let before = snapshot(&s.lab, MIDDLEMAN).unwrap();
        apply(&s.lab, &spec, &[]);
        let sides: Vec<String> = net.sides.iter().map(|s| s.name.to_string()).collect();
        for side in &sides {
            serve(&mut s, &format!("{side}-{}", hosts[1]), 7100, 0);
        }
        for from in &sides {
            for to in sides.iter().filter(|t| *t != from) {
                let target = alias_of(&net, to, hosts[1]);
                let target = match target {
                    IpAddr::V6(_) => format!("[{target}]:7100"),
                    IpAddr::V4(_) => format!("{target}:7100"),
                };
                let answer = connect(&s.lab, &format!("{from}-{}", hosts[0]), &target, None)
                    .unwrap_or_else(|e| panic!("{context}\n{from} -> {target}: {e}"));
                assert_eq!(
                    answer.server,
                    format!("{to}-{}", hosts[1]),
                    "{context}\n{from} -> {target}"
                );
                assert_eq!(
                    host_of(&answer.seen_as),
                    alias_of(&net, from, hosts[0]).to_string(),
                    "{context}\n{from} -> {target}: seen as"
                );
            }
        }
        delete(&s.lab, &spec);
        assert_same(&before, &snapshot(&s.lab, MIDDLEMAN).unwrap(), &context);
    }
}
