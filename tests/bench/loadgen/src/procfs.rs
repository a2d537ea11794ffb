//! CPU time and peak RSS of other processes, read from /proc (Linux only).

use std::fs;
use std::io;
use std::process::Command;

/// Clock ticks per second for the utime/stime fields of /proc/<pid>/stat.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds consumed so far by every thread of `pid`.
pub fn cpu_seconds(pid: u32, ticks: f64) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unexpected /proc/pid/stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let parse = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other("unexpected /proc/pid/stat format"))
    };
    Ok((parse(11)? + parse(12)?) / ticks)
}

/// Parent pid of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Direct children of `pid` (nginx workers of a master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

/// Resets the peak RSS (VmHWM) of `pid` to its current RSS (proc(5), clear_refs value 5).
pub fn reset_peak_rss(pid: u32) -> io::Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// Peak resident set size (VmHWM) of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmHWM in /proc/pid/status"))
}

/// Busy CPU seconds of the whole machine so far (all CPUs: total minus idle and iowait).
pub fn machine_busy_seconds(ticks: f64) -> io::Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::other("unexpected /proc/stat format"))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Ok((total - idle) / ticks)
}

/// What the host does with this machine's memory and how long it has been up: on a guest
/// whose virtio balloon reports free pages, memory the guest frees goes back to the host and
/// costs a host fault when touched again, which moves CPU per transfer by up to a tenth on a
/// freshly booted guest (BENCHMARKS.md, "Machine").
#[derive(Clone, Debug, serde::Serialize)]
pub struct MachineState {
    pub uptime_secs: Option<f64>,
    /// Whether a virtio balloon with free page reporting is present; `None`: no balloon.
    pub free_page_reporting: Option<bool>,
    pub mem_free_mib: Option<u64>,
    pub kernel: Option<String>,
}

pub fn machine_state() -> MachineState {
    let read = |p: &str| fs::read_to_string(p).ok();
    let balloon_features = fs::read_dir("/sys/bus/virtio/devices")
        .ok()
        .and_then(|mut dir| {
            dir.find_map(|d| {
                let d = d.ok()?.path();
                read(&format!("{}/device", d.display()))
                    .filter(|id| is_balloon(id))
                    .and_then(|_| read(&format!("{}/features", d.display())))
            })
        });
    MachineState {
        uptime_secs: read("/proc/uptime").and_then(|u| u.split_whitespace().next()?.parse().ok()),
        free_page_reporting: balloon_features.as_deref().map(reports_free_pages),
        mem_free_mib: read("/proc/meminfo").and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemFree:"))?;
            Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
        }),
        kernel: read("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()),
    }
}

/// A virtio device id of 5 is the memory balloon.
fn is_balloon(device_id: &str) -> bool {
    u32::from_str_radix(device_id.trim().trim_start_matches("0x"), 16) == Ok(5)
}

/// The virtio `features` file lists feature bits as '0'/'1', bit 0 first;
/// VIRTIO_BALLOON_F_REPORTING is bit 5.
fn reports_free_pages(features: &str) -> bool {
    features.trim().as_bytes().get(5) == Some(&b'1')
}

#[cfg(test)]
mod tests {
    use super::{is_balloon, reports_free_pages};

    #[test]
    fn a_balloon_reporting_free_pages_is_recognised() {
        // The benchmark machine's balloon (Firecracker): stats, deflate on OOM, reporting.
        assert!(is_balloon("0x0005\n"));
        assert!(!is_balloon("0x0002"));
        assert!(reports_free_pages(
            "0110010100000000000000000000000010000000\n"
        ));
        assert!(!reports_free_pages(
            "0110000100000000000000000000000010000000"
        ));
        assert!(!reports_free_pages("011"));
    }
}
