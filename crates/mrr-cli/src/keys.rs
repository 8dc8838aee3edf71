//! `mrr keys create`: a new API key, printed once, and the config entry that admits it.
//!
//! The entry holds the key's SHA-256 digest, never the key: a config file (or its backup)
//! that leaks gives no access. Every scope given here is checked with the same parsers the
//! node uses at start-up, so an entry this prints is one a node accepts.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use mrr_server::access::{generate_key, Action, KeyDigest, TopicPattern};

/// The key and its entry, as printed.
pub fn create(
    actions: &[String],
    topics: &[String],
    regions: &[String],
    expires: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<String> {
    let actions: BTreeSet<Action> =
        actions.iter().map(|a| Action::parse(a.trim())).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    if actions.is_empty() {
        bail!("--actions names at least one of read, write, admin");
    }
    let topics: Vec<String> = if topics.is_empty() { vec!["*".into()] } else { topics.to_vec() };
    for t in &topics {
        TopicPattern::parse(t).map_err(anyhow::Error::msg)?;
    }
    for r in regions {
        mrr_core::RegionName::new(r.as_str()).with_context(|| format!("--regions: {r:?} is not a region name"))?;
    }
    let expires = expires.map(expiry).transpose()?;
    let key = generate_key(&mut rand::rng());
    let digest = KeyDigest::of(&key);
    let name = name.map_or_else(|| format!("key-{}", &digest.to_string()[7..15]), str::to_owned);
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    let quoted = |items: &[String]| items.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>();
    let mut entry = format!(
        "  - name: {name:?}\n    hash: \"{digest}\"\n    actions: {}\n    topics: {}\n",
        list(actions.iter().map(|a| a.name().to_owned()).collect()),
        list(quoted(&topics)),
    );
    if !regions.is_empty() {
        entry.push_str(&format!("    regions: {}\n", list(quoted(regions))));
    }
    if let Some(at) = &expires {
        entry.push_str(&format!("    expires: \"{at}\"\n"));
    }
    Ok(format!(
        "Key (shown once; store it where your clients read MRR_KEY):\n\n  {key}\n\n\
         Add this entry under `api_keys:` in every node's config, then restart the nodes:\n\n\
         api_keys:\n{entry}"
    ))
}

/// An RFC 3339 instant as given, or a duration from now (`90d`) as one.
fn expiry(s: &str) -> anyhow::Result<String> {
    if humantime::parse_rfc3339(s).is_ok() {
        return Ok(s.to_owned());
    }
    let d: Duration = humantime::parse_duration(s).with_context(|| {
        format!("--expires {s:?}: write an RFC 3339 instant (2027-06-30T00:00:00Z) or a duration (90d)")
    })?;
    let at = SystemTime::now().checked_add(d).context("--expires is too far away")?;
    Ok(humantime::format_rfc3339_seconds(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_names_the_digest_of_the_printed_key_and_its_scope() {
        let out = create(
            &["read".into(), "write".into()],
            &["users".into(), "orders/*".into()],
            &[],
            Some("2027-06-30T00:00:00Z"),
            Some("web"),
        )
        .expect("valid");
        let key =
            out.lines().find_map(|l| l.trim().strip_prefix("mrr_").map(|k| format!("mrr_{k}"))).expect("key line");
        assert!(out.contains(&format!("hash: \"{}\"", KeyDigest::of(&key))), "{out}");
        assert!(out.contains("actions: [read, write]") && out.contains("topics: [\"users\", \"orders/*\"]"), "{out}");
        assert!(out.contains("expires: \"2027-06-30T00:00:00Z\""));
        assert!(create(&["wirte".into()], &[], &[], None, None).is_err());
        assert!(create(&["read".into()], &["us*ers".into()], &[], None, None).is_err());
        assert!(create(&["read".into()], &[], &[], Some("soon"), None).is_err());
    }
}
