//! Helpers shared by the end-to-end tests: where the workspace is, the
//! example and test guests built once per test process, the Kafka broker
//! ([`broker`]), the `sluice` process ([`process`]) and the building blocks of
//! the Kafka scenarios ([`scenario`]), the object stores and DuckDB
//! ([`lakes`]).

pub mod broker;
pub mod http;
pub mod lab;
pub mod lakes;
pub mod process;
pub mod scenario;

pub use http::{get as http_get, post_chunked, post_declaring, request as http_request};
pub use lab::{Lab, Token};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The path of the `sluice` binary under test (`sluice-under-test`). A
/// macro: Cargo tells the path to integration tests only, so it expands
/// there.
#[macro_export]
macro_rules! sluice_bin {
    () => {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice-under-test"))
    };
}

/// Polls `ok` every 50 ms until it holds; after `timeout`, fails naming
/// `what` and what `context` says (a log tail, a snapshot). Never a fixed
/// sleep before an assertion: wait for the condition itself.
pub fn eventually(
    what: &str,
    timeout: std::time::Duration,
    context: impl Fn() -> String,
    mut ok: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited {timeout:?} for {what}\n{}",
            context()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// [`eventually`] for a test that serves the host on its own runtime:
/// waits without blocking it.
pub async fn eventually_async(
    what: &str,
    timeout: std::time::Duration,
    mut ok: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited {timeout:?} for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A check this run cannot make (the mock cluster lacks what it needs, no
/// real server of that kind here): printed at once and appended to
/// `target/e2e-skips.txt`, which `scripts/test` counts and prints at the
/// end. A skip is never a silent pass.
pub fn skip(test: &str, what: &str, why: &str) {
    let line = format!("SKIP {test}: {what} ({why})");
    eprintln!("{line}");
    let file = root().join("target").join("e2e-skips.txt");
    let _ = std::fs::create_dir_all(root().join("target"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        use std::io::Write as _;
        let _ = writeln!(f, "{line}");
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The component of a transform project (relative to the workspace root),
/// built once per process.
pub fn module(project: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = BUILT.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(project) {
        return p.clone();
    }
    let path = sluice::project::resolve_module(&root().join(project), true)
        .unwrap_or_else(|e| panic!("building {project} failed: {e}"));
    cache.insert(project.to_string(), path.clone());
    path
}

/// An instance spec with no tables and no grants.
pub fn spec(
    name: &str,
    config: &str,
    limits: sluice::engine::Limits,
) -> sluice::engine::InstanceSpec {
    sluice::engine::InstanceSpec {
        name: std::sync::Arc::from(name),
        config: config.to_string(),
        tables: sluice::engine::RefTables::empty(),
        limits,
        grants: Default::default(),
    }
}

/// TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Every line of every file under `dir`, parsed as JSON, files in name order.
pub fn read_lake(dir: &Path) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        for line in text.lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: bad JSON line {line:?}: {e}", f.display())),
            );
        }
    }
    out
}

/// Hand-written hostile components (WebAssembly text), for attacks a
/// language toolchain would never produce: a `cabi_realloc` that lies, an
/// outcome list of the wrong length, a list length larger than memory, a
/// result pointer outside memory, imports of anything.
pub mod wat_guest {
    /// What `cabi_realloc` returns when the host asks for guest memory. The
    /// first call (for `init`'s configuration) is always answered correctly,
    /// so that the attack lands on a batch.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Realloc {
        /// A correct bump allocator.
        Bump,
        /// A pointer past the end of memory.
        OutOfBounds,
        /// `0xffff_fff8`: the top of the 32-bit address space.
        Huge,
        /// A pointer that is not aligned as asked.
        Misaligned,
    }

    /// What `process` returns.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Process {
        /// `n` outcomes (all `drop`): correct for a batch of `n` records.
        Drops(u32),
        /// A `kinds` list whose length (`0x7fff_ffff`) runs past memory.
        HugeLength,
        /// A result pointer past the end of memory.
        ResultOutOfBounds,
    }

    /// A component implementing the transform world's exports by hand.
    /// `imports` are extra instance imports (each with an empty type), e.g.
    /// `wasi:sockets/tcp@0.2.6`.
    pub fn component(realloc: Realloc, process: Process, imports: &[&str]) -> Vec<u8> {
        // Memory: 4 pages (256 KiB). Static data: `init`'s ok result at 16,
        // `process`'s result at 2048, outcome kinds at 3072, output ends at
        // 4096 (room for 256), the one output name at 5120, the heap from
        // 8192.
        let lie = match realloc {
            Realloc::Bump => "",
            Realloc::OutOfBounds => "(if (global.get $calls) (then (return (i32.const 0x40000))))",
            Realloc::Huge => "(if (global.get $calls) (then (return (i32.const 0xfffffff8))))",
            Realloc::Misaligned => {
                "(if (global.get $calls) (then (return (i32.add (global.get $next) (i32.const 1)))))"
            }
        };
        let realloc_body = format!(
            "(local $p i32)
             {lie}
             (global.set $calls (i32.const 1))
             (local.set $p (i32.and (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
                                    (i32.sub (i32.const 0) (local.get 2))))
             (global.set $next (i32.add (local.get $p) (local.get 3)))
             (local.get $p)"
        );
        let (kinds_len, result_ptr) = match process {
            Process::Drops(n) => (n, 2048u32),
            Process::HugeLength => (0x7fff_ffff, 2048),
            Process::ResultOutOfBounds => (0, 0x7fff_fff0),
        };
        let mut result = vec![0u8; 4]; // discriminant `ok`, padded to 4
        let lists: [(u32, u32); 10] = [
            (3072, kinds_len),          // kinds
            (4096, kinds_len.min(256)), // output-ends (zeros)
            (0, 0),                     // failures
            (5120, 1),                  // output-names: [""]
            (0, 0),                     // arena
            (0, 0),                     // spans
            (0, 0),                     // timestamps
            (0, 0),                     // header-ends
            (0, 0),                     // header-spans
            (0, 0),                     // output-index
        ];
        for (ptr, len) in lists {
            result.extend_from_slice(&ptr.to_le_bytes());
            result.extend_from_slice(&len.to_le_bytes());
        }
        let drops = vec![1u8; kinds_len.min(256) as usize];
        let empty_name = [0u8; 8]; // (ptr 0, len 0)
        let import_decls: String = imports
            .iter()
            .map(|name| format!("(import \"{name}\" (instance))\n"))
            .collect();
        let data = format!(
            "(data (i32.const 2048) \"{}\")\n(data (i32.const 3072) \"{}\")\n(data (i32.const 5120) \"{}\")",
            escape(&result),
            escape(&drops),
            escape(&empty_name)
        );
        let text = template(
            &import_decls,
            4,
            &realloc_body,
            &format!("(i32.const {result_ptr})"),
            &data,
        );
        match wat::parse_str(&text) {
            Ok(bytes) => bytes,
            Err(e) => panic!("the test's WAT does not parse: {e}\n{text}"),
        }
    }

    /// The component around a core module: `pages` of memory, a
    /// `cabi_realloc` with `realloc_body`, a `process` whose body is
    /// `process_body` (returning the result pointer) and data segments.
    fn template(
        import_decls: &str,
        pages: u32,
        realloc_body: &str,
        process_body: &str,
        data: &str,
    ) -> String {
        format!(
            r#"(component
  {import_decls}
  (core module $m
    (memory (export "memory") {pages})
    (global $next (mut i32) (i32.const 8192))
    (global $calls (mut i32) (i32.const 0))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      {realloc_body})
    (func (export "init") (param i32 i32) (result i32) (i32.const 16))
    (func (export "process")
      (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      {process_body})
    {data}
  )
  (core instance $i (instantiate $m))
  (type $source' (record (field "stream" string) (field "partition" s32)))
  (export $source "source" (type $source'))
  (type $batch' (record
    (field "arena" (list u8)) (field "spans" (list u32)) (field "timestamps" (list s64))
    (field "header-ends" (list u32)) (field "header-spans" (list u32))
    (field "sources" (list $source)) (field "source-index" (list u32)) (field "offsets" (list s64))))
  (export $batch "batch" (type $batch'))
  (type $kind' (enum "emit" "drop" "fail"))
  (export $kind "outcome-kind" (type $kind'))
  (type $failure' (record (field "kind" string) (field "message" string)))
  (export $failure "failure" (type $failure'))
  (type $outcomes' (record
    (field "kinds" (list $kind)) (field "output-ends" (list u32)) (field "failures" (list $failure))
    (field "output-names" (list string)) (field "arena" (list u8)) (field "spans" (list u32))
    (field "timestamps" (list s64)) (field "header-ends" (list u32)) (field "header-spans" (list u32))
    (field "output-index" (list u32))))
  (export $outcomes "outcomes" (type $outcomes'))
  (func (export "init") (param "config" string) (result (result (error string)))
    (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
  (func (export "process") (param "batch" $batch) (result (result $outcomes (error string)))
    (canon lift (core func $i "process") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
)"#
        )
    }

    /// A list or string in the guest's memory: (pointer, length).
    pub type Span = (u32, u32);

    /// A guest whose `process` returns exactly what the test lays out in
    /// its memory: lists and strings may alias each other, overlap or be
    /// huge. Static data lives from 64 KiB; regions given to
    /// [`Raw::filled`] are filled with a byte at every call (so that a
    /// 16 MiB string costs no 16 MiB of WAT).
    #[derive(Debug, Clone)]
    pub struct Raw {
        pages: u32,
        data: Vec<(u32, Vec<u8>)>,
        fills: Vec<(u32, u8, u32)>,
        next: u32,
    }

    impl Raw {
        /// A guest with `mib` MiB of memory.
        pub fn new(mib: u32) -> Self {
            Raw {
                pages: mib * 16,
                data: Vec::new(),
                fills: Vec::new(),
                next: 65536,
            }
        }

        /// Static bytes (8-aligned).
        pub fn bytes(&mut self, b: &[u8]) -> Span {
            let at = self.next;
            self.data.push((at, b.to_vec()));
            self.next = (at + b.len() as u32 + 7) & !7;
            (at, b.len() as u32)
        }

        /// A `list<u32>`.
        pub fn u32s(&mut self, v: &[u32]) -> Span {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (self.bytes(&b).0, v.len() as u32)
        }

        /// A `list<s64>`.
        pub fn i64s(&mut self, v: &[i64]) -> Span {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (self.bytes(&b).0, v.len() as u32)
        }

        /// A list of `string`s (or any list of pointer/length pairs).
        pub fn spans(&mut self, v: &[Span]) -> Span {
            let b: Vec<u8> = v
                .iter()
                .flat_map(|(p, l)| p.to_le_bytes().into_iter().chain(l.to_le_bytes()))
                .collect();
            (self.bytes(&b).0, v.len() as u32)
        }

        /// A list of `failure`s: (kind, message) pairs.
        pub fn failures(&mut self, v: &[(Span, Span)]) -> Span {
            let flat: Vec<Span> = v.iter().flat_map(|(k, m)| [*k, *m]).collect();
            let (ptr, _) = self.spans(&flat);
            (ptr, v.len() as u32)
        }

        /// `len` bytes at `at`, set to `byte` at every call.
        pub fn filled(&mut self, at: u32, byte: u8, len: u32) -> Span {
            self.fills.push((at, byte, len));
            (at, len)
        }

        fn build(self, result: Vec<u8>) -> Vec<u8> {
            let mut data = format!("(data (i32.const 2048) \"{}\")\n", escape(&result));
            for (at, b) in &self.data {
                data.push_str(&format!("(data (i32.const {at}) \"{}\")\n", escape(b)));
            }
            let mut body = String::new();
            for (at, byte, len) in &self.fills {
                body.push_str(&format!(
                    "(memory.fill (i32.const {at}) (i32.const {byte}) (i32.const {len}))\n"
                ));
            }
            // The input batch was lowered through the bump allocator: reset it.
            body.push_str("(global.set $next (i32.const 8192))\n(i32.const 2048)");
            let realloc = "(local $p i32)
             (local.set $p (i32.and (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
                                    (i32.sub (i32.const 0) (local.get 2))))
             (global.set $next (i32.add (local.get $p) (local.get 3)))
             (local.get $p)";
            let text = template("", self.pages, realloc, &body, &data);
            match wat::parse_str(&text) {
                Ok(bytes) => bytes,
                Err(e) => panic!("the test's WAT does not parse: {e}"),
            }
        }

        /// A component whose `process` returns `ok(outcomes)` with these ten
        /// lists, in the contract's order (kinds, output-ends, failures,
        /// output-names, arena, spans, timestamps, header-ends,
        /// header-spans, output-index).
        pub fn ok(self, lists: [Span; 10]) -> Vec<u8> {
            let mut result = vec![0u8; 4];
            for (ptr, len) in lists {
                result.extend_from_slice(&ptr.to_le_bytes());
                result.extend_from_slice(&len.to_le_bytes());
            }
            self.build(result)
        }

        /// A component whose `process` returns `err(message)`.
        pub fn err(self, message: Span) -> Vec<u8> {
            let mut result = vec![1u8, 0, 0, 0];
            result.extend_from_slice(&message.0.to_le_bytes());
            result.extend_from_slice(&message.1.to_le_bytes());
            self.build(result)
        }
    }

    fn escape(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("\\{b:02x}")).collect()
    }
}

/// `bytes` (a component) with one more custom section: the same code, a
/// different digest — a new "version" that behaves exactly like the old.
pub fn with_custom_section(bytes: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0);
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}
