//! The active Cedar policy set and its reload: a set that fails validation is refused and the
//! old one stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use policies::PolicyEngine;

use crate::state::metrics::ResultLabels;

pub struct PolicyHandle {
    engine: RwLock<PolicyEngine>,
    dir: Option<PathBuf>,
    stamp: Mutex<Option<SystemTime>>,
    /// Reloads by result, for `/metrics`: every reload (SIGHUP, API, file change) ends here.
    pub reloads: Family<ResultLabels, Counter>,
}

impl PolicyHandle {
    pub fn load(dir: Option<PathBuf>) -> Result<PolicyHandle, String> {
        let engine = load_engine(dir.as_deref())?;
        let stamp = dir.as_deref().and_then(newest_mtime);
        Ok(PolicyHandle {
            engine: RwLock::new(engine),
            dir,
            stamp: Mutex::new(stamp),
            reloads: zeroed_reloads(),
        })
    }

    pub fn engine(&self) -> PolicyEngine {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads now (SIGHUP). On error the current set stays active and the error says why.
    pub fn reload_now(&self) -> Result<(), String> {
        let loaded = load_engine(self.dir.as_deref());
        let result = if loaded.is_ok() { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        let fresh = loaded?;
        match self.engine.write() {
            Ok(mut e) => *e = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    pub fn reload_if_changed(&self) {
        let Some(dir) = self.dir.as_deref() else {
            return;
        };
        let newest = newest_mtime(dir);
        let mut stamp = match self.stamp.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if newest == *stamp {
            return;
        }
        *stamp = newest;
        match self.reload_now() {
            Ok(()) => tracing::info!("policy set reloaded"),
            Err(e) => {
                tracing::warn!(error = %e, "policy reload refused; the previous policy set stays active")
            }
        }
    }
}

/// Both results at 0 from the start, so the first failure is an increase to alert on.
fn zeroed_reloads() -> Family<ResultLabels, Counter> {
    let reloads = Family::default();
    for result in ["success", "failure"] {
        let _ = reloads.get_or_create(&ResultLabels { result });
    }
    reloads
}

fn load_engine(dir: Option<&Path>) -> Result<PolicyEngine, String> {
    match dir {
        Some(dir) => PolicyEngine::load_dir(dir).map_err(|e| e.to_string()),
        None => PolicyEngine::embedded_defaults().map_err(|e| e.to_string()),
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
}
