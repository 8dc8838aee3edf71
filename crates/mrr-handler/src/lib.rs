//! Rhai scripts run in a sandbox: custom conflict handlers (a script defining
//! `fn resolve(current, incoming)`, behind [`mrr_core::Resolver`]) and the update functions of
//! strong topics (a script defining `fn update(current, args)`, behind
//! [`mrr_core::strong::UpdateFunction`], run by the strong tier's state machine).
//!
//! The sandbox: no IO of any kind (Rhai has none built in; `import` is compiled out, `eval` is
//! disabled, `print`/`debug` go nowhere), no clock (compiled out — a handler must be
//! deterministic), and bounded operations, call depth, expression depth, string, array and map
//! sizes, and result size. A handler that exceeds a limit or raises an error fails the change,
//! which the engine sends to the dead-letter queue; it never stalls replication. This crate
//! compiles and calls scripts; it does not read their files (the config loader does, bounded
//! by [`SCRIPT_BYTES_MAX`]) or decide when they run (the engine's fold does).

use std::fmt;

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
    #[error("conflict handler {path}:{line}:{column}: {message}")]
    Syntax { path: String, line: usize, column: usize, message: String },
    #[error(
        "conflict handler {path} defines no `fn resolve(current, incoming)`: add one that returns the merged record"
    )]
    NoResolve { path: String },
    #[error("update function {path} defines no `fn update(current, args)`: add one that returns the new record, or () to leave it as it is")]
    NoUpdate { path: String },
}

/// The largest script a handler or update function may be: its file is refused beyond it.
pub const SCRIPT_BYTES_MAX: u64 = 1024 * 1024;

/// A compiled script and its sandbox.
struct Script {
    engine: Engine,
    ast: AST,
    path: String,
    fingerprint: String,
    result_bytes_max: usize,
}

impl Script {
    fn compile(name: &str, source: &str, limits: Limits) -> Result<Self, CompileError> {
        let engine = sandbox(&limits);
        let ast = engine.compile(source).map_err(|e| CompileError::Syntax {
            path: name.to_owned(),
            line: e.1.line().unwrap_or(0),
            column: e.1.position().unwrap_or(0),
            message: e.0.to_string(),
        })?;
        let digest = Sha256::digest(source.as_bytes());
        let fingerprint = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Self { engine, ast, path: name.to_owned(), fingerprint, result_bytes_max: limits.result_bytes_max })
    }

    fn defines(&self, entry: &str, params: usize) -> bool {
        self.ast.iter_functions().any(|f| f.name == entry && f.params.len() == params)
    }

    fn call(&self, entry: &str, args: impl rhai::FuncArgs) -> Result<Dynamic, String> {
        self.engine.call_fn(&mut Scope::new(), &self.ast, entry, args).map_err(|e| format!("{}: {e}", self.path))
    }

    /// The script's answer as a record, within the result bound.
    fn record(&self, entry: &str, out: &Dynamic) -> Result<Map<String, Value>, String> {
        let value: Value = rhai::serde::from_dynamic(out)
            .map_err(|e| format!("{}: {entry} returned no JSON value: {e}", self.path))?;
        let Value::Object(record) = value else {
            return Err(format!("{}: {entry} must return an object map, returned {value}", self.path));
        };
        let len = Value::Object(record.clone()).to_string().len();
        if len > self.result_bytes_max {
            return Err(format!("{}: record of {len} bytes exceeds {} bytes", self.path, self.result_bytes_max));
        }
        Ok(record)
    }
}

fn dynamic(v: Value) -> Result<Dynamic, String> {
    rhai::serde::to_dynamic(v).map_err(|e| format!("value not representable: {e}"))
}

pub struct RhaiHandler {
    script: Script,
}

impl fmt::Debug for RhaiHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RhaiHandler")
            .field("path", &self.script.path)
            .field("fingerprint", &self.script.fingerprint)
            .finish()
    }
}

/// A strong topic's update function: `fn update(current, args)` gets the record (`()` when it
/// does not exist) and the caller's `args`, and returns the new record, or `()` to leave it
/// (answered 409 `precondition_failed`); a thrown error refuses the request (422). Runs inside
/// the state machine, in every region, so it gets the same sandbox as a handler.
pub struct RhaiFunction {
    script: Script,
}

impl fmt::Debug for RhaiFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RhaiFunction")
            .field("path", &self.script.path)
            .field("fingerprint", &self.script.fingerprint)
            .finish()
    }
}

impl RhaiFunction {
    pub fn compile(name: &str, source: &str, limits: Limits) -> Result<Self, CompileError> {
        Self::checked(Script::compile(name, source, limits)?)
    }

    fn checked(script: Script) -> Result<Self, CompileError> {
        if !script.defines("update", 2) {
            return Err(CompileError::NoUpdate { path: script.path });
        }
        Ok(Self { script })
    }
}

impl mrr_core::strong::UpdateFunction for RhaiFunction {
    fn call(&self, current: Option<&Map<String, Value>>, args: &Value) -> Result<Option<Map<String, Value>>, String> {
        let current = match current {
            Some(m) => dynamic(Value::Object(m.clone()))?,
            None => Dynamic::UNIT,
        };
        let out = self.script.call("update", (current, dynamic(args.clone())?))?;
        if out.is_unit() {
            return Ok(None);
        }
        self.script.record("update", &out).map(Some)
    }

    fn fingerprint(&self) -> String {
        self.script.fingerprint.clone()
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
    /// Compiles `source`; `name` is how errors and the policy digest refer to it.
    pub fn compile(name: &str, source: &str, limits: Limits) -> Result<Self, CompileError> {
        Self::checked(Script::compile(name, source, limits)?)
    }

    fn checked(script: Script) -> Result<Self, CompileError> {
        if !script.defines("resolve", 2) {
            return Err(CompileError::NoResolve { path: script.path });
        }
        Ok(Self { script })
    }
}

impl Resolver for RhaiHandler {
    fn resolve(
        &self,
        current: &Map<String, Value>,
        incoming: &Map<String, Value>,
    ) -> Result<Map<String, Value>, String> {
        let arg = |m: &Map<String, Value>| dynamic(Value::Object(m.clone()));
        let out = self.script.call("resolve", (arg(current)?, arg(incoming)?))?;
        self.script.record("resolve", &out)
    }

    fn fingerprint(&self) -> String {
        self.script.fingerprint.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn source(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/handlers").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn example(name: &str) -> RhaiHandler {
        RhaiHandler::compile(name, &source(name), Limits::default()).unwrap_or_else(|e| panic!("{e}"))
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
    fn the_reserve_sample_takes_stock_only_while_it_lasts() {
        use mrr_core::strong::UpdateFunction;
        let f = RhaiFunction::compile("reserve.rhai", &source("reserve.rhai"), Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let stock = obj(json!({"id": "s", "available": 3}));
        let after = f.call(Some(&stock), &json!({"qty": 2})).expect("runs").expect("reserves");
        assert_eq!(Value::Object(after.clone()), json!({"id": "s", "available": 1, "reserved": 2}));
        assert_eq!(f.call(Some(&after), &json!({"qty": 2})).expect("runs"), None, "not enough: left as it is");
        assert!(f.call(None, &json!({"qty": 1})).expect_err("absent").contains("no such item"));
        assert!(f.call(Some(&stock), &json!({"qty": "two"})).is_err());
        assert!(matches!(
            RhaiFunction::compile("x.rhai", "fn resolve(c, i) { c }", Limits::default()),
            Err(CompileError::NoUpdate { .. })
        ));
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
