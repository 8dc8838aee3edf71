//! `mrr certs`: the cluster's CA and a certificate per region, for mutual TLS between regions.
//!
//! Regions and the hosts each certificate names come from a config (`-c`, a file the whole
//! cluster may share: each region's endpoint and API hosts), or from `--regions`. An existing
//! CA in the output directory is reused, so a region added later gets a certificate from the
//! same CA; existing region files are kept unless `--force`. Keys are written readable by
//! their owner only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use mrr_server::Config;
use mrr_tls::Issued;

#[derive(clap::Args, Debug, Clone)]
pub struct CertsArgs {
    /// The cluster's config: its regions, and the hosts of their `endpoint` and `api` URLs.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Regions, when no config is given.
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    /// More host names or addresses every region's certificate names (e.g. 127.0.0.1).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Where to write ca.pem, ca.key, <region>.pem and <region>.key.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// How long the certificates are valid.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub valid_for: Duration,
    /// Replace region certificates that exist.
    #[arg(long)]
    pub force: bool,
}

/// The host of an `http(s)://host[:port]` URL.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => {
            authority.rsplit_once(':').map_or(authority, |(h, p)| if p.parse::<u16>().is_ok() { h } else { authority })
        }
    };
    (!host.is_empty()).then(|| host.to_owned())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    let (cluster, regions): (String, Vec<(String, Vec<String>)>) = match &args.config {
        Some(path) => {
            let c = Config::load_cluster(path)?;
            let regions = c
                .regions
                .iter()
                .map(|r| {
                    let hosts = [Some(r.endpoint.as_str()), r.api.as_deref()].into_iter().flatten().filter_map(host_of);
                    let mut hosts: Vec<String> = hosts.collect();
                    hosts.dedup();
                    (r.name.to_string(), hosts)
                })
                .collect();
            (c.cluster.clone(), regions)
        }
        None if !args.regions.is_empty() => {
            ("mrr".to_owned(), args.regions.iter().map(|r| (r.clone(), Vec::new())).collect())
        }
        None => bail!("name the regions: -c mrr-config.yaml, or --regions ap-northeast,us-west,eu-central"),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let (ca_pem, ca_key) = (args.out.join("ca.pem"), args.out.join("ca.key"));
    let ca = if ca_pem.exists() && ca_key.exists() {
        println!("using the CA in {}", ca_pem.display());
        Issued {
            cert_pem: std::fs::read_to_string(&ca_pem).with_context(|| format!("cannot read {}", ca_pem.display()))?,
            key_pem: std::fs::read_to_string(&ca_key).with_context(|| format!("cannot read {}", ca_key.display()))?,
        }
    } else {
        let ca = mrr_tls::make_ca(&cluster, args.valid_for)?;
        std::fs::write(&ca_pem, &ca.cert_pem).with_context(|| format!("cannot write {}", ca_pem.display()))?;
        write_private(&ca_key, &ca.key_pem)?;
        println!(
            "made the cluster CA: {} (keep {} offline; it signs every region)",
            ca_pem.display(),
            ca_key.display()
        );
        ca
    };
    for (region, mut hosts) in regions {
        let (pem, key) = (args.out.join(format!("{region}.pem")), args.out.join(format!("{region}.key")));
        if pem.exists() && !args.force {
            println!("kept {} (--force replaces it)", pem.display());
            continue;
        }
        hosts.extend(args.hosts.iter().cloned());
        let issued = mrr_tls::make_region(&ca, &region, &hosts, args.valid_for)
            .with_context(|| format!("region {region} (hosts {hosts:?})"))?;
        std::fs::write(&pem, &issued.cert_pem).with_context(|| format!("cannot write {}", pem.display()))?;
        write_private(&key, &issued.key_pem)?;
        println!(
            "{}: {} and {} (names {}, {})",
            region,
            pem.display(),
            key.display(),
            mrr_tls::region_dns_name(&region),
            hosts.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_endpoint_urls() {
        assert_eq!(host_of("https://tokyo-node.mrr"), Some("tokyo-node.mrr".into()));
        assert_eq!(host_of("http://127.0.0.1:7801"), Some("127.0.0.1".into()));
        assert_eq!(host_of("https://[::1]:7801/x"), Some("::1".into()));
        assert_eq!(host_of("http://"), None);
    }

    #[test]
    fn certificates_for_the_articles_cluster_load_as_each_region_and_the_ca_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let article = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/article/mrr-config.yaml");
        let args = CertsArgs {
            config: Some(article),
            regions: vec![],
            hosts: vec!["127.0.0.1".into()],
            out: dir.path().to_owned(),
            valid_for: mrr_tls::VALIDITY_DEFAULT,
            force: false,
        };
        run(&args).expect("made");
        let ca = std::fs::read(dir.path().join("ca.pem")).expect("ca");
        for region in ["ap-northeast", "us-west", "eu-central"] {
            let paths = mrr_tls::TlsPaths {
                cert: dir.path().join(format!("{region}.pem")),
                key: dir.path().join(format!("{region}.key")),
                ca: dir.path().join("ca.pem"),
            };
            mrr_tls::Material::load(&paths, region, mrr_tls::UnixTime::now()).unwrap_or_else(|e| panic!("{e}"));
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&paths.key).expect("key").permissions());
            assert_eq!(mode & 0o777, 0o600, "{region}.key is its owner's only");
        }
        let pem = std::fs::read(dir.path().join("us-west.pem")).expect("pem");
        run(&CertsArgs { regions: vec!["sa-east".into()], config: None, ..args }).expect("added");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).expect("ca"), ca, "the CA is reused");
        assert_eq!(std::fs::read(dir.path().join("us-west.pem")).expect("pem"), pem, "kept");
        assert!(dir.path().join("sa-east.pem").exists());
    }
}
