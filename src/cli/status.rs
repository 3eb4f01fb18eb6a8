//! `kmsfs status`: what each running mount reports about itself (through the reserved
//! `user.kmsfs.status` xattr of its root), plus the latest audit events of the key store.

use crate::cli::args::{Global, OutputFormat, StatusArgs};
use crate::cli::output;
use crate::config::Config;
use crate::error::Result;
use crate::fs::nametransform::CONFIG_FILE;
use crate::fs::ops::STATUS_XATTR;
use crate::fs::sys;
use serde_json::{Value, json};
use std::path::PathBuf;

/// (cipher dir, mount point) of every kmsfs mount visible here.
fn kmsfs_mounts() -> Vec<(PathBuf, PathBuf)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    crate::fs::mount::mounts(&info)
        .into_iter()
        .filter(|(src, _)| src.join(CONFIG_FILE).is_file())
        .collect()
}

fn mount_status(cipher: PathBuf, point: PathBuf) -> Value {
    let reported = std::fs::File::open(&point)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            sys::fgetxattr(&f, STATUS_XATTR.as_bytes())
                .map_err(|e| std::io::Error::from_raw_os_error(e.0).to_string())
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()));
    let mut v = match reported {
        Ok(v) if v.is_object() => v,
        Ok(_) => json!({ "Error": "the daemon's answer is not a status object" }),
        Err(e) => json!({ "Error": format!("the daemon did not answer: {e}") }),
    };
    v["MountPoint"] = json!(point);
    v["CipherDir"] = json!(cipher);
    v
}

fn recent_audit(g: &Global, cfg: &Config, n: usize) -> std::result::Result<Vec<Value>, String> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let kms = crate::cli::commands::open_kms(g, cfg).map_err(|e| e.to_string())?;
    let recs = kms.audit_records().map_err(|e| e.to_string())?;
    let skip = recs.len().saturating_sub(n);
    Ok(recs
        .into_iter()
        .skip(skip)
        .map(|r| {
            json!({
                "Time": r.time,
                "Operation": r.operation,
                "KeyId": r.key_id,
                "KeyVersion": r.key_version,
                "Uid": r.caller.uid,
                "Result": r.result,
            })
        })
        .collect())
}

pub fn status(g: &Global, cfg: &Config, a: &StatusArgs) -> Result<()> {
    let mounts: Vec<Value> = kmsfs_mounts()
        .into_iter()
        .map(|(c, p)| mount_status(c, p))
        .collect();
    let audit = recent_audit(g, cfg, a.events);
    if g.output == OutputFormat::Json {
        return output::json(&json!({
            "Mounts": mounts,
            "RecentAudit": audit.as_ref().ok(),
            "AuditError": audit.as_ref().err(),
        }));
    }
    if mounts.is_empty() {
        println!("no kmsfs mounts");
    }
    for m in &mounts {
        print_mount(m);
    }
    match audit {
        Ok(events) if !events.is_empty() => {
            println!("latest audit events:");
            for e in events {
                println!(
                    "  {}  {:<28} {:<38} uid {:<6} {}",
                    e["Time"].as_str().unwrap_or(""),
                    e["Operation"].as_str().unwrap_or(""),
                    e["KeyId"].as_str().unwrap_or("-"),
                    e["Uid"],
                    e["Result"].as_str().unwrap_or("")
                );
            }
        }
        Ok(_) => {}
        Err(e) => println!("audit events not shown: {e}"),
    }
    Ok(())
}

fn print_mount(m: &Value) {
    let s = |k: &str| m[k].as_str().unwrap_or("?").to_string();
    println!("{} on {}", s("CipherDir"), s("MountPoint"));
    if let Some(e) = m["Error"].as_str() {
        println!("  {e}");
        return;
    }
    println!(
        "  daemon pid {}, up {}s, idle {}s; {} open files, {} open handles",
        m["Pid"], m["UptimeSeconds"], m["IdleSeconds"], m["OpenFiles"], m["OpenHandles"]
    );
    println!("  volume key {}", s("VolumeKey"));
    let t = &m["Transport"];
    match t["Kind"].as_str() {
        Some("io_uring") => println!(
            "  requests over io_uring: {} queues, {} requests served",
            t["RingQueues"], t["RingRequests"]
        ),
        Some(kind) => println!("  requests over {kind}"),
        None => {}
    }
    for k in m["Keys"].as_array().into_iter().flatten() {
        println!(
            "  key {}  {}  version {}  {} open files",
            k["KeyId"].as_str().unwrap_or("?"),
            k["State"].as_str().unwrap_or("?"),
            k["CurrentVersion"],
            k["OpenFiles"]
        );
    }
    let d = &m["Caches"]["Decisions"];
    let (hits, misses) = (
        d["Hits"].as_u64().unwrap_or(0),
        d["Misses"].as_u64().unwrap_or(0),
    );
    let rate = (hits * 100).checked_div(hits + misses).unwrap_or(0);
    println!(
        "  caches: decisions {}/{} ({}% hits of {}), inodes {}, directory keys {}",
        d["Entries"],
        d["Limit"],
        rate,
        hits + misses,
        m["Caches"]["Inodes"],
        m["Caches"]["DirectoryKeys"]
    );
    let f = &m["DeferredFrees"];
    match f["Enabled"].as_bool() {
        Some(true) => println!(
            "  deleted files freed after the reply: {} so far, {} pending",
            f["Deferred"], f["Pending"]
        ),
        Some(false) => println!("  deleted files freed inline (not a local filesystem)"),
        None => {}
    }
}
