//! Starting and stopping the processes under test (gateway nodes, nginx), bounded in time.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::setup::BenchFederation;
use crate::BoxError;

/// A process we started; stopped (SIGTERM, then SIGKILL after a grace period) on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Its stdout and stderr.
    log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, BoxError> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// Fails if the process already exited, quoting the end of its log (why it stopped).
    pub fn check_alive(&mut self) -> Result<(), BoxError> {
        match self.child.try_wait()? {
            Some(status) => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
                Err(format!(
                    "{} exited early ({status}); end of {}:\n  {tail}",
                    self.name,
                    self.log.display()
                )
                .into())
            }
            None => Ok(()),
        }
    }

    /// SIGTERM (by pid, through kill(1): no unsafe here), wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(
    proc: &mut Proc,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.check_alive()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} not listening on {addr} after {timeout:?}", proc.name).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// nginx as the deployable alternative: TLS 1.3 only, client certificates required and
/// verified against the federation CA, proxying to a trivial sink (`return 200`) over a
/// keep-alive upstream. Request bodies are read completely before they go upstream
/// (`proxy_request_buffering on`, in memory up to 2 MiB, spilled to a temp file above, like
/// the gateway's own upload spool); 2 workers for the 2 cores.
pub fn nginx_conf(fed: &BenchFederation, prefix: &Path) -> String {
    let cert = fed.sink_dir.join(pki_tools::layout::TLS_CERT);
    let key = fed.sink_dir.join(pki_tools::layout::TLS_KEY);
    format!(
        r#"daemon off;
master_process on;
worker_processes 2;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream sink {{
        server {plain};
        keepalive 256;
    }}
    server {{
        listen {tls} ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        client_max_body_size 0;
        location / {{
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering on;
            client_body_buffer_size 2m;
        }}
    }}
    server {{
        listen {plain};
        client_max_body_size 0;
        location / {{ return 200; }}
    }}
}}
"#,
        prefix = prefix.display(),
        plain = fed.sink_plain,
        tls = fed.sink_tls,
        cert = cert.display(),
        key = key.display(),
        ca = fed.ca_cert.display(),
    )
}
