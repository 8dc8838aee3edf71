//! `mrr dev`: the layout of a local cluster, and one config file per region.
//!
//! The cluster is the article's three regions on 127.0.0.1, with one-way delays emulating the
//! WAN between Tokyo, San Francisco and Frankfurt. Configs are written as commented YAML and
//! parsed back before use, so `mrr dev` and `mrr serve -c` run exactly the same settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, LanesConfig, ReplicationRules, TopicConfig};

/// One-way delay between two regions, in ms. The article's three regions get measured-looking
/// figures; any other pair gets 50 ms.
pub fn delay_ms(a: &str, b: &str) -> u64 {
    let mut pair = [a, b];
    pair.sort_unstable();
    match pair {
        ["ap-northeast", "us-west"] => 55,
        ["eu-central", "us-west"] => 75,
        ["ap-northeast", "eu-central"] => 115,
        _ => 50,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("--base-port {base_port} leaves no room for {regions} regions (region k uses P+10k and P+10k+1)")]
    Ports { base_port: u16, regions: usize },
    #[error("generated config is invalid (a bug in mrr dev): {0}")]
    Generated(ConfigError),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot make the dev cluster's certificates: {0}")]
    Tls(mrr_tls::TlsError),
}

/// A topic policy of the dev cluster.
#[derive(Debug, Clone)]
pub struct DevTopic {
    pub name: String,
    pub strategy: &'static str,
    pub handler: Option<DevHandler>,
}

#[derive(Debug, Clone)]
pub enum DevHandler {
    /// A sample shipped in the binary, written beside the configs as `handlers/<file>`.
    Sample { file: &'static str, source: &'static str },
    /// A script of the config the cluster was derived from.
    Path(PathBuf),
}

/// The samples of `examples/handlers`, so `mrr dev` shows every strategy out of the box.
fn sample_topics() -> Vec<DevTopic> {
    let sample = |name: &str, file: &'static str, source: &'static str| DevTopic {
        name: name.into(),
        strategy: "custom",
        handler: Some(DevHandler::Sample { file, source }),
    };
    vec![
        DevTopic { name: "profiles".into(), strategy: "merge", handler: None },
        sample("inventory", "inventory.rhai", include_str!("../../../examples/handlers/inventory.rhai")),
        sample("orders", "orders.rhai", include_str!("../../../examples/handlers/orders.rhai")),
    ]
}

#[derive(Debug, Clone)]
pub struct DevRegion {
    pub name: String,
    pub coordinator: bool,
    pub api_port: u16,
    pub peer_port: u16,
}

/// The rules of the config a cluster was derived from (`mrr dev -c FILE`), every field of
/// them: written back as they were, handler paths made absolute.
#[derive(Debug, Clone)]
pub struct DerivedRules {
    pub replication_rules: ReplicationRules,
    pub topics: BTreeMap<String, TopicConfig>,
    pub lanes: LanesConfig,
}

#[derive(Debug, Clone)]
pub struct DevCluster {
    pub regions: Vec<DevRegion>,
    /// The article cluster's sample topics (`None` when derived from a config).
    pub topics: Vec<DevTopic>,
    pub derived: Option<DerivedRules>,
    pub secret: String,
    /// The key every region admits with every action (`api_keys:` holds its digest only).
    pub admin_key: String,
    pub data_dir: PathBuf,
    /// `--tls`: a throwaway CA and a certificate per region, written beside the configs
    /// (`certs/`); peers then speak mutual TLS over `https://` endpoints, and the APIs HTTPS.
    pub tls: Option<DevTls>,
}

/// The dev cluster's CA and region certificates.
#[derive(Debug, Clone)]
pub struct DevTls {
    pub ca: mrr_tls::Issued,
    /// Per region, in `regions` order.
    pub regions: Vec<mrr_tls::Issued>,
}

impl DevCluster {
    /// The article's cluster, or the regions and rules of `from` when given. `admin_key`: the
    /// cluster's admin key (a new one when `None`).
    pub fn new(
        base_port: u16,
        data_dir: PathBuf,
        from: Option<&Config>,
        admin_key: Option<String>,
    ) -> Result<Self, DevError> {
        let names: Vec<(String, bool)> = match from {
            Some(c) => c.regions.iter().map(|r| (r.name.to_string(), c.coordinator() == Some(&r.name))).collect(),
            None => vec![("ap-northeast".into(), true), ("us-west".into(), false), ("eu-central".into(), false)],
        };
        let top = u32::from(base_port) + 10 * (names.len() as u32) + 1;
        if top > u32::from(u16::MAX) {
            return Err(DevError::Ports { base_port, regions: names.len() });
        }
        let regions = names
            .into_iter()
            .enumerate()
            .map(|(k, (name, coordinator))| {
                let api_port = base_port + 10 * k as u16;
                DevRegion { name, coordinator, api_port, peer_port: api_port + 1 }
            })
            .collect();
        let (topics, derived) = match from {
            Some(c) => {
                let mut topics = c.topics.clone();
                for t in topics.values_mut() {
                    let absolute = |p: &mut PathBuf| {
                        let joined = c.base_dir.join(&*p);
                        *p = std::path::absolute(&joined).unwrap_or(joined);
                    };
                    if let Some(h) = t.handler.as_mut() {
                        absolute(h);
                    }
                    t.functions.values_mut().for_each(absolute);
                }
                let rules =
                    DerivedRules { replication_rules: c.replication_rules.clone(), topics, lanes: c.lanes.clone() };
                (Vec::new(), Some(rules))
            }
            None => (sample_topics(), None),
        };
        let secret: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect();
        let admin_key =
            admin_key.filter(|k| !k.trim().is_empty()).unwrap_or_else(|| crate::access::generate_key(&mut rand::rng()));
        Ok(Self { regions, topics, derived, secret, admin_key, data_dir, tls: None })
    }

    /// Peers speak mutual TLS and the APIs HTTPS: a throwaway CA, and a certificate per region
    /// naming it and the loopback addresses.
    pub fn with_tls(mut self) -> Result<Self, DevError> {
        let valid_for = std::time::Duration::from_secs(30 * 24 * 3600);
        let ca = mrr_tls::make_ca("mrr-dev", valid_for).map_err(DevError::Tls)?;
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let regions = self
            .regions
            .iter()
            .map(|r| mrr_tls::make_region(&ca, &r.name, &hosts, valid_for))
            .collect::<Result<Vec<_>, _>>()
            .map_err(DevError::Tls)?;
        self.tls = Some(DevTls { ca, regions });
        Ok(self)
    }

    /// `https` with `--tls`, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The YAML config of region `k`.
    pub fn config_text(&self, k: usize) -> String {
        let me = &self.regions[k];
        let mut s = String::new();
        s.push_str(&format!(
            "# MRR config for region {name}, written by `mrr dev --write-configs`.\n\
             # Run it with: mrr serve -c {name}.yaml\n\
             cluster: mrr-dev\n\
             region: {name}\n\
             secret: \"{secret}\"\n\
             data_dir: {data}\n\
             listen:\n  api: 127.0.0.1:{api}\n  peer: 127.0.0.1:{peer}\n\
             max_clock_skew: 200ms\n\
             debug_mode: false\n\
             durability: fsync\n\
             # The dev cluster's admin key (`mrr dev` prints it; clients send it as a Bearer token).\n\
             api_keys:\n  - {{ name: dev-admin, hash: \"{digest}\", actions: [read, write, admin] }}\n",
            name = me.name,
            secret = self.secret,
            digest = crate::access::KeyDigest::of(&self.admin_key),
            data = self.data_dir.join(&me.name).display(),
            api = me.api_port,
            peer = me.peer_port,
        ));
        let scheme = self.scheme();
        if self.tls.is_none() {
            s.push_str("# Peers replicate over plain HTTP/2 on loopback (`mrr dev --tls` for mutual TLS).\ninsecure_plaintext: true\n");
        }
        if self.tls.is_some() {
            s.push_str(&format!(
                "# Mutual TLS between regions: a throwaway CA made by `mrr dev --tls`.\ntls: {{ cert: certs/{name}.pem, key: certs/{name}.key, ca: certs/ca.pem }}\n",
                name = me.name
            ));
        }
        s.push_str("regions:\n");
        for r in &self.regions {
            s.push_str(&format!(
                "  - name: {}\n    endpoint: {scheme}://127.0.0.1:{}\n    api: {scheme}://127.0.0.1:{}\n",
                r.name, r.peer_port, r.api_port
            ));
            if r.coordinator {
                s.push_str("    role: coordinator\n");
            }
        }
        if let Some(d) = &self.derived {
            // Flow mappings (YAML takes JSON) carry every field of the source's rules.
            s.push_str("# The rules of the config this cluster was derived from.\n");
            s.push_str(&format!("replication_rules: {}\n", json(&d.replication_rules)));
            s.push_str(&format!("topics: {}\n", json(&d.topics)));
            s.push_str(&format!("lanes: {}\n", json(&d.lanes)));
        } else {
            s.push_str("replication_rules:\n  default_ttl: 500ms\n  conflict_strategy: timestamp\n");
        }
        if !self.topics.is_empty() {
            s.push_str("# Conflict rules per topic (docs/conflicts.md).\ntopics:\n");
            for t in &self.topics {
                let handler = match &t.handler {
                    None => String::new(),
                    Some(DevHandler::Sample { file, .. }) => format!(", handler: handlers/{file}"),
                    Some(DevHandler::Path(p)) => format!(", handler: \"{}\"", p.display()),
                };
                s.push_str(&format!("  {}: {{ conflict_strategy: {}{handler} }}\n", t.name, t.strategy));
            }
            if self.derived.is_none() {
                s.push_str(
                    "  # Linearizable: every write committed by a quorum through the coordinator's log (docs/consistency.md).\n  stock: { consistency: strong }\n  # Escrow: `incr` on `available` is answered locally against rights each region holds, and the\n  # total never goes below 0 (docs/consistency.md).\n  tickets: { bounded: { available: { min: 0 } } }\n",
                );
            }
        }
        // The strong tier's timers: the largest round trip between two regions.
        let rtt_ms = self
            .regions
            .iter()
            .flat_map(|a| {
                self.regions.iter().filter(move |b| b.name != a.name).map(move |b| 2 * delay_ms(&a.name, &b.name))
            })
            .max()
            .unwrap_or(0);
        s.push_str(&format!(
            "# The strong tier's Raft timers derive from the largest round trip between regions.\nconsensus:\n  rtt_ms: {rtt_ms}\n"
        ));
        s.push_str("# Emulated WAN: one-way delay from this region to each peer.\nlinks:\n");
        for r in self.regions.iter().filter(|r| r.name != me.name) {
            s.push_str(&format!("  {}: {{ delay_ms: {}, jitter_ms: 0 }}\n", r.name, delay_ms(&me.name, &r.name)));
        }
        s
    }

    /// Every region's config, parsed back through the same loader `mrr serve` uses. Writes the
    /// sample handlers into `dir/handlers` first, where the configs point.
    pub fn configs(&self, dir: &Path) -> Result<Vec<(PathBuf, Config)>, DevError> {
        if let Some(tls) = &self.tls {
            let certs = dir.join("certs");
            let write = |name: String, text: &str| {
                let path = certs.join(name);
                std::fs::create_dir_all(&certs)
                    .and_then(|()| std::fs::write(&path, text))
                    .map_err(|source| DevError::Write { path: path.display().to_string(), source })
            };
            write("ca.pem".into(), &tls.ca.cert_pem)?;
            // A throwaway CA: its key sits beside it, so a test or a user can issue more.
            write("ca.key".into(), &tls.ca.key_pem)?;
            for (r, issued) in self.regions.iter().zip(&tls.regions) {
                write(format!("{}.pem", r.name), &issued.cert_pem)?;
                write(format!("{}.key", r.name), &issued.key_pem)?;
            }
        }
        for t in &self.topics {
            if let Some(DevHandler::Sample { file, source }) = &t.handler {
                let path = dir.join("handlers").join(file);
                let write = |path: &Path| -> std::io::Result<()> {
                    std::fs::create_dir_all(dir.join("handlers"))?;
                    std::fs::write(path, source)
                };
                write(&path).map_err(|source| DevError::Write { path: path.display().to_string(), source })?;
            }
        }
        (0..self.regions.len())
            .map(|k| {
                let path = dir.join(format!("{}.yaml", self.regions[k].name));
                let config = Config::parse(&path, &self.config_text(k)).map_err(DevError::Generated)?;
                Ok((path, config))
            })
            .collect()
    }
}

/// A config section as one line of JSON, which YAML reads as a flow mapping.
fn json<T: serde::Serialize>(section: &T) -> String {
    // Config sections are plain data: serialising them cannot fail.
    serde_json::to_string(section).unwrap_or_else(|e| unreachable!("config section to JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn article_cluster_ports_and_delays() {
        let c = DevCluster::new(7800, PathBuf::from("/tmp/x"), None, None).expect("layout");
        let ports: Vec<_> = c.regions.iter().map(|r| (r.name.as_str(), r.api_port, r.peer_port)).collect();
        assert_eq!(ports, [("ap-northeast", 7800, 7801), ("us-west", 7810, 7811), ("eu-central", 7820, 7821)]);
        assert_eq!(delay_ms("us-west", "ap-northeast"), 55);
        assert_eq!(delay_ms("eu-central", "us-west"), 75);
        assert_eq!(delay_ms("ap-northeast", "eu-central"), 115);
        let dir = tempfile::tempdir().expect("tempdir");
        let configs = c.configs(dir.path()).expect("valid configs");
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[0].1.policies.rule("profiles").name(), "merge");
        assert_eq!(configs[0].1.policies.rule("orders").name(), "custom", "sample handlers written and compiled");
        // Derived from a config: its topics come along, handlers resolved where that config is.
        let from = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mrr-config.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let derived = DevCluster::new(7800, PathBuf::from("/tmp/x"), Some(&from), None).expect("layout");
        let configs = derived.configs(dir.path()).expect("valid configs");
        assert_eq!(rules_of(&configs[0].1), rules_of(&from));
        let (_, sf) = &configs[1];
        assert_eq!(sf.region.as_str(), "us-west");
        assert_eq!(sf.coordinator().map(|r| r.as_str()), Some("ap-northeast"));
        assert_eq!(sf.links.as_ref().map(|l| l.len()), Some(2));
        assert!(DevCluster::new(65_530, PathBuf::from("/tmp/x"), None, None).is_err());
    }

    /// The policy digest without the sealer's fingerprint: a derived dev cluster has its own
    /// secret, hence its own sealed names.
    fn rules_of(c: &Config) -> String {
        let digest = c.policies.digest();
        digest.split(";seal=").next().unwrap_or_default().to_owned()
    }

    #[test]
    fn a_cluster_derived_from_a_config_keeps_every_rule_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("h.rhai"), "fn resolve(current, incoming) { incoming }").expect("write");
        let text = [
            "cluster: c",
            "region: a",
            "secret: \"0123456789abcdef\"",
            "insecure_plaintext: true",
            "data_dir: d",
            "listen: { api: 127.0.0.1:1, peer: 127.0.0.1:2 }",
            "regions:",
            "  - { name: a, endpoint: http://127.0.0.1:2 }",
            "  - { name: b, endpoint: http://127.0.0.1:3 }",
            "replication_rules: { default_ttl: 750ms, conflict_strategy: merge, regions: [a, b], placement_writes: forward }",
            "topics:",
            "  vips: { conflict_strategy: timestamp, lane: urgent, regions: [b], placement_writes: refuse }",
            "  stock: { conflict_strategy: custom, handler: h.rhai, lane: bulk }",
            "lanes: { urgent: [HOT], bulk: [COLD, BULK], queue_delay_target: 80ms }",
        ]
        .join("\n");
        let from = Config::parse(&dir.path().join("src.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let derived = DevCluster::new(7800, PathBuf::from("/tmp/x"), Some(&from), None).expect("layout");
        let out = dir.path().join("out");
        for (_, c) in derived.configs(&out).expect("valid configs") {
            assert_eq!(json(&c.replication_rules), json(&from.replication_rules));
            assert_eq!(json(&c.lanes), json(&from.lanes));
            let mut want = from.topics.clone();
            want.values_mut().filter_map(|t| t.handler.as_mut()).for_each(|h| *h = dir.path().join(&*h));
            assert_eq!(json(&c.topics), json(&want), "every topic field, handlers found where the source is");
            assert_eq!(rules_of(&c), rules_of(&from));
        }
    }
}
