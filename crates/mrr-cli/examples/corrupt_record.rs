//! Corrupts one record in a *stopped* node's data directory, as a failing disk would: the
//! record is lost (`lose`) or its value changes under the same version (`change`). For the
//! anti-entropy benchmark (`bench/anti_entropy.sh`) and for trying `mrr repair` by hand:
//!
//! ```text
//! cargo run --release -p mrr-cli --example corrupt_record -- DATA_DIR users/u001 change
//! ```
//!
//! Never run it on the data directory of a running node (fjall locks it, and this refuses).

use std::path::PathBuf;

use anyhow::{bail, Context};
use mrr_core::Key;
use mrr_storage::{CommitBatch, Durability, FjallStore, Store};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, path, how] = args.as_slice() else {
        bail!("usage: corrupt_record DATA_DIR TOPIC/ID lose|change");
    };
    let (topic, id) = path.split_once('/').context("the record is named TOPIC/ID")?;
    let key = Key::new(topic, id);
    let store = FjallStore::open(&PathBuf::from(dir), Durability::Fsync)
        .with_context(|| format!("cannot open {dir} (is its node still running?)"))?;
    let Some(mut record) = store.get(&key)? else { bail!("{path} is not held in {dir}") };
    let batch = match how.as_str() {
        "lose" => CommitBatch { records_removed: vec![key], ..Default::default() },
        "change" => {
            record.value = Some(br#"{"corrupted":"by a bad disk"}"#.to_vec());
            CommitBatch { records: vec![(key, record)], ..Default::default() }
        }
        other => bail!("{other}: say lose or change"),
    };
    store.commit(&batch)?;
    println!("{how}: {path} in {dir}");
    Ok(())
}
