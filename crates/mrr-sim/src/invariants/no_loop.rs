//! No change loops back to its origin: a region is never sent its own change.

use mrr_writer::Refusal;

use super::Invariant;

#[derive(Debug, Default)]
pub struct NoLoop;

impl Invariant for NoLoop {
    fn name(&self) -> &'static str {
        "no_loop"
    }

    fn on_refusal(&mut self, node: usize, refusal: &Refusal) -> Result<(), String> {
        match refusal {
            Refusal::Loop { id } => Err(format!("r{node} was sent its own change {id}")),
            _ => Ok(()),
        }
    }
}
