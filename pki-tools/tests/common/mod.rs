//! Shared harness: run the real `pki` binary and the real `openssl` in a temporary directory.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]
#![allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const OPENSSL: &str = "/usr/bin/openssl";

/// The result of one `pki` or `openssl` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Expect exit 1 with a `pki: ...` message containing every fragment.
    #[track_caller]
    pub fn fails_with(self, fragments: &[&str]) -> Run {
        assert_eq!(
            self.code, 1,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(self.stderr.starts_with("pki: "), "stderr: {}", self.stderr);
        for f in fragments {
            assert!(
                self.stderr.contains(f),
                "{f:?} not in stderr: {}",
                self.stderr
            );
        }
        self
    }
}

/// A scratch directory in which commands run, so paths in messages are short and relative.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pki(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new(env!("CARGO_BIN_EXE_pki"))
                .args(args)
                .current_dir(self.dir.path())
                .output()
                .unwrap(),
        )
    }

    pub fn openssl(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new(OPENSSL)
                .args(args)
                .current_dir(self.dir.path())
                .output()
                .unwrap(),
        )
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn mode(&self, rel: &str) -> u32 {
        fs::metadata(self.path(rel)).unwrap().permissions().mode() & 0o777
    }

    pub fn set_mode(&self, rel: &str, mode: u32) {
        fs::set_permissions(self.path(rel), fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `init` + three facilities (hospital, lab on an IP, payer).
    pub fn federation_with_three(&self) {
        self.pki(&["init", "--dir", "fed", "--name", "Test Health Federation"])
            .ok();
        self.pki(&[
            "add-facility",
            "--dir",
            "fed",
            "--id",
            "hosp-a",
            "--name",
            "Hospital A",
            "--endpoint",
            "https://hosp-a.example.org:8443",
            "--out",
            "node-a",
        ])
        .ok();
        self.pki(&[
            "add-facility",
            "--dir",
            "fed",
            "--id",
            "lab-1",
            "--name",
            "Central Lab",
            "--kind",
            "lab",
            "--endpoint",
            "https://127.0.0.1:9443",
            "--out",
            "node-l",
        ])
        .ok();
        self.pki(&[
            "add-facility",
            "--dir",
            "fed",
            "--id",
            "payer-x",
            "--name",
            "Payer X",
            "--kind",
            "payer",
            "--endpoint",
            "https://payer.example.net:443",
            "--out",
            "node-p",
        ])
        .ok();
    }

    /// The certificate serial as OpenSSL prints it (upper-case hex).
    pub fn serial(&self, cert: &str) -> String {
        let out = self
            .openssl(&["x509", "-in", cert, "-noout", "-serial"])
            .ok();
        out.stdout.trim().trim_start_matches("serial=").to_owned()
    }

    /// Names of all entries in a directory (to spot left-over temporary files).
    pub fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

pub fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}
