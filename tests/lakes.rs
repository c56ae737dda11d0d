//! The object stores the lake tests write to — moto's S3 on 127.0.0.1:5055
//! and Azurite on 127.0.0.1:10000, started by `scripts/services start` —
//! and DuckDB reading the lake back, through the tools' Python.

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::{ObjectStore, ObjectStoreExt as _};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

/// moto's S3 endpoint.
pub const S3_ENDPOINT: &str = "http://127.0.0.1:5055";

/// The tools' Python (moto, DuckDB, the Azure client).
pub fn python() -> String {
    let out = Command::new(crate::root().join("scripts/services"))
        .arg("python")
        .output()
        .expect("scripts/services python");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn helper(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(crate::root().join("tests/lake/lake.py"))
        .args(args)
        .output()
        .expect("run tests/lake/lake.py");
    assert!(
        out.status.success(),
        "tests/lake/lake.py {args:?} failed (is `scripts/services start` done?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates a bucket on moto (a fresh name per test).
pub fn s3_bucket(name: &str) {
    helper(&["s3-bucket", S3_ENDPOINT, name]);
}

/// Creates a container on Azurite.
pub fn az_container(name: &str) {
    helper(&["az-container", name]);
}

/// Runs SQL in DuckDB (httpfs loaded, an S3 secret for moto); the rows.
pub fn duckdb(sql: &str) -> Vec<serde_json::Value> {
    let out = helper(&["duckdb", S3_ENDPOINT, sql]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("duckdb printed {out:?}: {e}"))
}

/// Reads a lake folder on disk as a pyarrow dataset (Hive partitions;
/// names starting with `.` or `_` skipped, as pyarrow, Spark and Hive do):
/// `{"rows", "files", "columns"}`.
pub fn pyarrow(dir: &std::path::Path) -> serde_json::Value {
    let out = helper(&["pyarrow", &dir.display().to_string()]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pyarrow printed {out:?}: {e}"))
}

/// The pipeline-file options of a moto bucket.
pub const S3_OPTIONS: &str = "options = { endpoint = \"http://127.0.0.1:5055\", allow_http = \"true\", access_key_id = \"testing\", secret_access_key = \"testing\", region = \"us-east-1\" }";

/// The pipeline-file options of Azurite.
pub const AZ_OPTIONS: &str = "options = { use_emulator = \"true\" }";

/// A client of a moto bucket.
pub fn s3(bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(S3_ENDPOINT)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_region("us-east-1")
            .build()
            .expect("s3 client"),
    )
}

/// A client of an Azurite container.
pub fn azure(container: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        MicrosoftAzureBuilder::new()
            .with_use_emulator(true)
            .with_container_name(container)
            .build()
            .expect("azure client"),
    )
}

/// Every object under `prefix`: key → bytes.
pub fn objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    use futures::TryStreamExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let p = object_store::path::Path::from(prefix);
        let metas: Vec<_> = store.list(Some(&p)).try_collect().await.expect("list");
        let mut out = BTreeMap::new();
        for m in metas {
            let bytes = store
                .get(&m.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("bytes");
            out.insert(m.location.to_string(), bytes.to_vec());
        }
        out
    })
}

/// The keys under `prefix` (no bodies).
pub fn keys(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let p = object_store::path::Path::from(prefix);
        let metas: Vec<_> = store.list(Some(&p)).try_collect().await.expect("list");
        metas.into_iter().map(|m| m.location.to_string()).collect()
    })
}
