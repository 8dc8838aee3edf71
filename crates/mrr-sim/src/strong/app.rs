//! The simulated strong tier's application: registers by key, with writes and compare-and-set
//! ordered by the group, and the request-id table that makes a retried command apply once.
//! Its state is its "disk": it survives a crash of the node (the consensus log does too), as
//! an applied-and-fsynced state machine would.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use mrr_consensus::{Apply, ApplyBatch, BoxFuture, Command, Response, SnapshotData};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOp {
    Write { key: u8, value: u64 },
    Cas { key: u8, expect: u64, new: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: u64,
    pub op: RegisterOp,
}

/// What applying a proposal answered: whether it took effect (a CAS may not), and the value
/// the key held before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub applied: bool,
    pub before: u64,
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_else(|e| unreachable!("plain data encodes: {e}"))
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    values: BTreeMap<u8, u64>,
    answered: BTreeMap<u64, Outcome>,
    position: Option<Vec<u8>>,
    /// Commands applied, duplicates excluded.
    applied: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Registers {
    state: Arc<Mutex<State>>,
}

impl Registers {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn value(&self, key: u8) -> u64 {
        self.lock().values.get(&key).copied().unwrap_or(0)
    }
}

impl Apply for Registers {
    fn apply(&self, batch: ApplyBatch) -> BoxFuture<io::Result<Vec<Response>>> {
        let mut s = self.lock();
        let mut out = Vec::with_capacity(batch.commands.len());
        for (_, Command(bytes)) in batch.commands {
            let p = postcard::from_bytes::<Proposal>(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            let outcome = match p {
                Err(e) => return Box::pin(async move { Err(e) }),
                Ok(p) => match s.answered.get(&p.request_id) {
                    Some(o) => *o,
                    None => {
                        let (key, next, applied) = match p.op {
                            RegisterOp::Write { key, value } => (key, Some(value), true),
                            RegisterOp::Cas { key, expect, new } => {
                                let now = s.values.get(&key).copied().unwrap_or(0);
                                (key, (now == expect).then_some(new), now == expect)
                            }
                        };
                        let before = s.values.get(&key).copied().unwrap_or(0);
                        if let Some(v) = next {
                            s.values.insert(key, v);
                        }
                        s.applied += 1;
                        let o = Outcome { applied, before };
                        s.answered.insert(p.request_id, o);
                        o
                    }
                },
            };
            out.push(Response(encode(&outcome)));
        }
        s.position = Some(batch.position);
        Box::pin(async move { Ok(out) })
    }

    fn position(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock().position.clone())
    }

    fn snapshot(&self) -> BoxFuture<io::Result<SnapshotData>> {
        let s = self.lock().clone();
        Box::pin(async move { Ok(SnapshotData { position: s.position.clone().unwrap_or_default(), data: encode(&s) }) })
    }

    fn restore(&self, snapshot: SnapshotData) -> BoxFuture<io::Result<()>> {
        let restored = postcard::from_bytes::<State>(&snapshot.data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        let this = self.clone();
        Box::pin(async move {
            let mut state = restored?;
            state.position = Some(snapshot.position);
            *this.lock() = state;
            Ok(())
        })
    }
}
