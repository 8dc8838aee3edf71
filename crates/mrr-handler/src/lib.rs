//! Custom conflict handlers: a Rhai script defining `fn resolve(current, incoming)`, run in a
//! sandbox behind [`mrr_core::Resolver`].
//!
//! The sandbox: no IO of any kind (Rhai has none built in; `import` is compiled out, `eval` is
//! disabled, `print`/`debug` go nowhere), no clock (compiled out — a handler must be
//! deterministic), and bounded operations, call depth, expression depth, string, array and map
//! sizes, and result size. A handler that exceeds a limit or raises an error fails the change,
//! which the engine sends to the dead-letter queue; it never stalls replication. This crate
//! compiles and calls scripts; it does not decide when they run (the engine's fold does).

use std::fmt;
use std::path::Path;

use mrr_core::Resolver;
use rhai::{Dynamic, Engine, Scope, AST};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Sandbox bounds. Exceeding one fails the call, deterministically in every region.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub operations_max: u64,
    pub call_levels_max: usize,
    pub expr_depth_max: usize,
    pub string_bytes_max: usize,
    pub array_len_max: usize,
    pub map_len_max: usize,
    /// Bytes of the merged record, as JSON.
    pub result_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            operations_max: 100_000,
            call_levels_max: 32,
            expr_depth_max: 64,
            string_bytes_max: 256 * 1024,
            array_len_max: 10_000,
            map_len_max: 10_000,
            result_bytes_max: 1024 * 1024,
        }
    }
}

/// A handler that cannot be used; start-up stops with this.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot read conflict handler {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("conflict handler {path}:{line}:{column}: {message}")]
    Syntax { path: String, line: usize, column: usize, message: String },
    #[error(
        "conflict handler {path} defines no `fn resolve(current, incoming)`: add one that returns the merged record"
    )]
    NoResolve { path: String },
}

pub struct RhaiHandler {
    engine: Engine,
    ast: AST,
    path: String,
    fingerprint: String,
    result_bytes_max: usize,
}

impl fmt::Debug for RhaiHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RhaiHandler").field("path", &self.path).field("fingerprint", &self.fingerprint).finish()
    }
}

fn sandbox(limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.operations_max)
        .set_max_call_levels(limits.call_levels_max)
        .set_max_expr_depths(limits.expr_depth_max, limits.expr_depth_max)
        .set_max_string_size(limits.string_bytes_max)
        .set_max_array_size(limits.array_len_max)
        .set_max_map_size(limits.map_len_max)
        .on_print(|_| {})
        .on_debug(|_, _, _| {});
    engine.disable_symbol("eval");
    engine
}

impl RhaiHandler {
    pub fn load(path: &Path, limits: Limits) -> Result<Self, CompileError> {
        let shown = path.display().to_string();
        let source =
            std::fs::read_to_string(path).map_err(|source| CompileError::Read { path: shown.clone(), source })?;
        Self::compile(&shown, &source, limits)
    }

    /// Compiles `source`; `name` is how errors and the policy digest refer to it.
    pub fn compile(name: &str, source: &str, limits: Limits) -> Result<Self, CompileError> {
        let engine = sandbox(&limits);
        let ast = engine.compile(source).map_err(|e| CompileError::Syntax {
            path: name.to_owned(),
            line: e.1.line().unwrap_or(0),
            column: e.1.position().unwrap_or(0),
            message: e.0.to_string(),
        })?;
        if !ast.iter_functions().any(|f| f.name == "resolve" && f.params.len() == 2) {
            return Err(CompileError::NoResolve { path: name.to_owned() });
        }
        let digest = Sha256::digest(source.as_bytes());
        let fingerprint = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Self { engine, ast, path: name.to_owned(), fingerprint, result_bytes_max: limits.result_bytes_max })
    }
}

impl Resolver for RhaiHandler {
    fn resolve(
        &self,
        current: &Map<String, Value>,
        incoming: &Map<String, Value>,
    ) -> Result<Map<String, Value>, String> {
        let arg = |m: &Map<String, Value>| {
            rhai::serde::to_dynamic(Value::Object(m.clone())).map_err(|e| format!("record not representable: {e}"))
        };
        let out: Dynamic = self
            .engine
            .call_fn(&mut Scope::new(), &self.ast, "resolve", (arg(current)?, arg(incoming)?))
            .map_err(|e| format!("{}: {e}", self.path))?;
        let value: Value = rhai::serde::from_dynamic(&out)
            .map_err(|e| format!("{}: resolve returned no JSON value: {e}", self.path))?;
        let Value::Object(merged) = value else {
            return Err(format!("{}: resolve must return an object map, returned {value}", self.path));
        };
        let len = Value::Object(merged.clone()).to_string().len();
        if len > self.result_bytes_max {
            return Err(format!("{}: merged record of {len} bytes exceeds {} bytes", self.path, self.result_bytes_max));
        }
        Ok(merged)
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn example(name: &str) -> RhaiHandler {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/handlers").join(name);
        RhaiHandler::load(&path, Limits::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn inventory_sample_merges_concurrent_deductions() {
        let h = example("inventory.rhai");
        // Stock was 100; one region took 2, another concurrently took 3.
        let a = obj(json!({"sku": "A1", "stock": 98, "operation": "deduct", "quantity": 2}));
        let b = obj(json!({"sku": "A1", "stock": 97, "operation": "deduct", "quantity": 3}));
        let merged = h.resolve(&a, &b).expect("resolve");
        assert_eq!(merged.get("stock"), Some(&json!(95)));
        // A restock concurrent with a deduction keeps the deduction.
        let restock = obj(json!({"sku": "A1", "stock": 500, "operation": "restock"}));
        assert_eq!(h.resolve(&restock, &b).expect("resolve").get("stock"), Some(&json!(497)));
        assert_eq!(h.resolve(&b, &restock).expect("resolve").get("stock"), Some(&json!(500)));
        // Concurrent deductions can oversell; the sample says so instead of hiding it.
        let low = obj(json!({"sku": "A1", "stock": 1, "operation": "deduct", "quantity": 1}));
        let merged = h.resolve(&low, &b).expect("resolve");
        assert_eq!((merged.get("stock"), merged.get("oversold")), (Some(&json!(-2)), Some(&json!(true))));
    }

    #[test]
    fn orders_sample_moves_status_forward_and_unions_items() {
        let h = example("orders.rhai");
        let item =
            |id: &str, qty: i64, at: i64| json!({"productId": id, "price": 2.5, "quantity": qty, "updatedAt": at});
        let a = obj(
            json!({"id": "o1", "status": "shipped", "items": [item("p1", 1, 10), item("p2", 1, 10)], "totalAmount": 5.0}),
        );
        let b = obj(
            json!({"id": "o1", "status": "confirmed", "items": [item("p2", 3, 20), item("p3", 2, 20)], "totalAmount": 12.5}),
        );
        let merged = h.resolve(&a, &b).expect("resolve");
        assert_eq!(merged.get("status"), Some(&json!("shipped")), "status never moves back");
        assert_eq!(merged.get("items"), Some(&json!([item("p1", 1, 10), item("p2", 3, 20), item("p3", 2, 20)])));
        assert_eq!(merged.get("totalAmount"), Some(&json!(15.0)));
        let cancelled = obj(json!({"id": "o1", "status": "cancelled", "items": []}));
        let delivered = obj(json!({"id": "o1", "status": "delivered", "items": []}));
        assert_eq!(h.resolve(&cancelled, &delivered).expect("resolve").get("status"), Some(&json!("cancelled")));
        assert_eq!(h.resolve(&delivered, &cancelled).expect("resolve").get("status"), Some(&json!("cancelled")));
    }

    #[test]
    fn scripts_are_sandboxed_and_errors_name_the_place() {
        let limits = Limits { operations_max: 10_000, ..Limits::default() };
        let spin = RhaiHandler::compile("spin.rhai", "fn resolve(c, i) { loop {} }", limits).expect("compiles");
        let err = spin.resolve(&Map::new(), &Map::new()).expect_err("bounded");
        assert!(err.contains("spin.rhai") && err.to_lowercase().contains("too many operations"), "{err}");
        let deep = RhaiHandler::compile("deep.rhai", "fn f(n) { f(n + 1) } fn resolve(c, i) { f(0) }", limits)
            .expect("compiles");
        assert!(deep.resolve(&Map::new(), &Map::new()).is_err());
        let big = "fn resolve(c, i) { let s = \"x\"; loop { s += s; } }";
        let big = RhaiHandler::compile("big.rhai", big, limits).expect("compiles");
        assert!(big.resolve(&Map::new(), &Map::new()).is_err());
        let not_map = RhaiHandler::compile("n.rhai", "fn resolve(c, i) { 42 }", limits).expect("compiles");
        assert!(not_map.resolve(&Map::new(), &Map::new()).expect_err("not a map").contains("object map"));
        assert!(RhaiHandler::compile("e.rhai", "fn resolve(c, i) { eval(\"1\") }", limits).is_err(), "eval is off");
        assert!(
            RhaiHandler::compile("t.rhai", "fn resolve(c, i) { timestamp() }", limits)
                .expect("compiles")
                .resolve(&Map::new(), &Map::new())
                .is_err(),
            "no clock"
        );
        match RhaiHandler::compile("bad.rhai", "fn resolve(c, i) {\n  let x = ;\n}", limits) {
            Err(CompileError::Syntax { line: 2, .. }) => {}
            other => panic!("want a syntax error on line 2, got {other:?}"),
        }
        assert!(matches!(
            RhaiHandler::compile("none.rhai", "fn merge(a, b) { a }", limits),
            Err(CompileError::NoResolve { .. })
        ));
    }
}
