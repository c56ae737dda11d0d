//! Commands that talk to a running host's API: deploy, rollback, status,
//! pipelines, versions, pause and resume, apply, delete.

use super::table::*;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where a running host is, and the token to use.
#[derive(Debug, clap::Args)]
pub(super) struct Remote {
    /// The host's API (default http://127.0.0.1:7070).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    host: String,
    /// A file holding the bearer token (default: `SLUICE_TOKEN`).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Remote {
    fn client(&self) -> anyhow::Result<crate::client::Client> {
        let token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the token file `{}`", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("SLUICE_TOKEN")
                .ok()
                .map(|t| t.trim().to_string()),
        };
        Ok(crate::client::Client::new(&self.host, token)?)
    }
}

/// Runs one API call and prints its answer; an error status is an error.
pub(super) fn remote_call(
    remote: &Remote,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let client = remote.client()?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let answer = rt.block_on(client.call(method, path, body))?;
    let json = answer.json();
    if !answer.ok() {
        let message = json["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or(answer.body);
        let hint = match answer.status {
            401 if remote.token_file.is_none() && std::env::var_os("SLUICE_TOKEN").is_none() => {
                " (this host wants a token: export SLUICE_TOKEN or give --token-file)"
            }
            401 | 403 => " (check the token in SLUICE_TOKEN or --token-file)",
            _ => "",
        };
        anyhow::bail!("{} {path}: {} {message}{hint}", method, answer.status);
    }
    Ok(json)
}

/// A path segment, percent-encoded.
pub(super) fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(super) fn pause_or_resume(
    remote: &Remote,
    pipeline: &str,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let json = remote_call(
        remote,
        "POST",
        &format!("/api/pipelines/{}/{verb}", segment(pipeline)),
        Vec::new(),
    )?;
    eprintln!(
        "pipeline `{pipeline}`: {}",
        json["state"].as_str().unwrap_or(verb)
    );
    Ok(ExitCode::SUCCESS)
}

/// Follows a new version's probation on the host: exit 0 when it passed,
/// non-zero with the host's reason when it was rolled back.
pub(super) fn wait_for_probation(
    remote: &Remote,
    pipeline: &str,
    transform: &str,
    digest: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let path = format!("/api/pipelines/{}", segment(pipeline));
    let mut said = None;
    loop {
        let snap = remote_call(remote, "GET", &path, Vec::new())?;
        let active = snap["transforms"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == transform)
            .and_then(|t| t["digest"].as_str())
            .unwrap_or_default()
            .to_string();
        let on_probation = snap["probation"]["digest"].as_str() == Some(digest);
        if active != digest {
            let why = snap["last_errors"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
                .filter_map(|e| e["message"].as_str())
                .find(|m| m.contains(digest) && m.contains("rolled back"))
                .map(str::to_string)
                .unwrap_or_else(|| format!("the active version is now {active}"));
            anyhow::bail!("{pipeline}/{transform}: {digest} was rolled back: {why}");
        }
        if !on_probation {
            eprintln!("{pipeline}/{transform}: {digest} passed its probation and stays active");
            return Ok(ExitCode::SUCCESS);
        }
        let state = snap["state"].as_str().unwrap_or_default();
        if matches!(state, "finished" | "stopped" | "failed") {
            anyhow::bail!(
                "{pipeline}/{transform}: the pipeline is {state} while {digest} is on probation; it is judged when the pipeline runs again (start it again, e.g. `sluice apply` its file)"
            );
        }
        let remaining = snap["probation"]["remaining"].as_u64().unwrap_or_default();
        if said != Some(remaining) {
            eprintln!(
                "{pipeline}/{transform}: on probation, {remaining} records to go (--no-wait to return at once)"
            );
            said = Some(remaining);
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "{pipeline}/{transform}: {digest} is active and still on probation after {} s ({remaining} records to go: are records flowing?); the host rolls it back by itself if it fails",
                timeout.as_secs()
            );
            return Ok(ExitCode::from(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `sluice deploy`: uploads a module, activates it and waits for its probation.
pub(super) fn deploy(
    remote: Remote,
    pipeline: String,
    transform: String,
    module: PathBuf,
    no_activate: bool,
    no_wait: bool,
    wait_timeout: u64,
) -> anyhow::Result<ExitCode> {
    // The host, the token and the pipeline are checked before a
    // build that can take a minute.
    remote_call(
        &remote,
        "GET",
        &format!("/api/pipelines/{}", segment(&pipeline)),
        Vec::new(),
    )?;
    let path = crate::project::resolve_module(&module, false)?;
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let report = remote_call(
        &remote,
        "POST",
        &format!(
            "/api/pipelines/{}/transforms/{}/modules?activate={}",
            segment(&pipeline),
            segment(&transform),
            !no_activate
        ),
        bytes,
    )?;
    let digest = report["digest"].as_str().unwrap_or_default().to_string();
    match report["swapped"].as_object() {
        Some(s) => eprintln!(
            "{pipeline}/{transform}: {digest} active (was {}), taking traffic {:.0} ms after the upload",
            s.get("previous")
                .and_then(|v| v.as_str())
                .unwrap_or_default(),
            report["total_ms"].as_f64().unwrap_or_default()
        ),
        None => {
            eprintln!(
                "{pipeline}/{transform}: {digest} stored and validated (not active; `sluice versions` lists it)"
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    if no_wait {
        eprintln!(
            "{pipeline}/{transform}: not waiting for its probation (`sluice status {pipeline}` shows it)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    wait_for_probation(
        &remote,
        &pipeline,
        &transform,
        &digest,
        std::time::Duration::from_secs(wait_timeout),
    )
}

/// `sluice rollback`: the version before the active one takes traffic again.
pub(super) fn rollback(
    remote: Remote,
    pipeline: String,
    transform: String,
) -> anyhow::Result<ExitCode> {
    let report = remote_call(
        &remote,
        "POST",
        &format!(
            "/api/pipelines/{}/transforms/{}/rollback",
            segment(&pipeline),
            segment(&transform)
        ),
        Vec::new(),
    )?;
    eprintln!(
        "{pipeline}/{transform}: rolled back to {}",
        report["digest"].as_str().unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// `sluice status`: one pipeline, or all, in detail.
pub(super) fn status(
    remote: Remote,
    pipeline: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let path = match &pipeline {
        Some(p) => format!("/api/pipelines/{}", segment(p)),
        None => "/api/pipelines".to_string(),
    };
    let json = remote_call(&remote, "GET", &path, Vec::new())?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let one = [json.clone()];
    let pipelines = match pipeline {
        Some(_) => &one[..],
        None => json["pipelines"].as_array().map_or(&[][..], Vec::as_slice),
    };
    for p in pipelines {
        print_status(p);
    }
    print_refused(&json);
    Ok(ExitCode::SUCCESS)
}

/// `sluice pipelines`: one line per pipeline.
pub(super) fn pipelines(remote: Remote, as_json: bool) -> anyhow::Result<ExitCode> {
    let json = remote_call(&remote, "GET", "/api/pipelines", Vec::new())?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = json["pipelines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(pipeline_row)
        .collect();
    print_table(&PIPELINE_HEADER, &rows);
    print_refused(&json);
    Ok(ExitCode::SUCCESS)
}

/// `sluice versions`: the versions a transform has had, the active one marked.
pub(super) fn versions(
    remote: Remote,
    pipeline: String,
    transform: String,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let json = remote_call(
        &remote,
        "GET",
        &format!(
            "/api/pipelines/{}/transforms/{}/versions",
            segment(&pipeline),
            segment(&transform)
        ),
        Vec::new(),
    )?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let active = json["active"].as_str().unwrap_or_default();
    let list = |key: &str| -> Vec<String> {
        json[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let mut rows: Vec<Vec<String>> = list("versions")
        .into_iter()
        .map(|v| {
            let mark = if v == active { "active" } else { "" };
            vec![v, mark.to_string()]
        })
        .collect();
    rows.extend(
        list("stored")
            .into_iter()
            .map(|v| vec![v, "stored (never activated)".to_string()]),
    );
    print_table(&["DIGEST", ""], &rows);
    Ok(ExitCode::SUCCESS)
}

/// `sluice apply`: creates or replaces a pipeline on a running host.
pub(super) fn apply(remote: Remote, file: PathBuf) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read `{}`", file.display()))?;
    let name = toml::from_str::<toml::Table>(&text)
        .with_context(|| format!("`{}` is not TOML", file.display()))?
        .get("name")
        .and_then(|n| n.as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("`{}` has no `name`: the host needs one", file.display()))?;
    let json = remote_call(
        &remote,
        "PUT",
        &format!("/api/pipelines/{}", segment(&name)),
        text.into_bytes(),
    )?;
    eprintln!(
        "pipeline `{name}`: {}",
        if json["replaced"].as_bool() == Some(true) {
            "replaced"
        } else {
            "created"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `sluice delete`: stops and removes a pipeline.
pub(super) fn delete(remote: Remote, pipeline: String) -> anyhow::Result<ExitCode> {
    remote_call(
        &remote,
        "DELETE",
        &format!("/api/pipelines/{}", segment(&pipeline)),
        Vec::new(),
    )?;
    eprintln!("pipeline `{pipeline}`: deleted");
    Ok(ExitCode::SUCCESS)
}
