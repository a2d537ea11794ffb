//! Unit tests of `--syscalls`' parsers: /proc, perf stat, strace output and path classes.

use std::collections::BTreeMap;

use super::strace::{parse_strace, path_class};
use super::{parse_io, parse_perf_stat, parse_stat, per_transfer_map};

#[test]
fn proc_stat_and_io_are_read() {
    // A gateway's /proc/<pid>/stat (its name has a space and a parenthesis on purpose).
    let stat = "4242 (gate way)) S 1 4242 4242 0 -1 4194560 1500 0 2 0 250 75 0 0 20 0 \
                23 0 12345 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 4096 17472";
    let c = parse_stat(stat).unwrap();
    assert_eq!(
        (c.minflt, c.majflt, c.utime, c.stime),
        (1500.0, 2.0, 250.0, 75.0)
    );
    assert!(parse_stat("4242 (x) S 1").is_none());
    let io = parse_io(
        "rchar: 1000\nwchar: 2000\nsyscr: 10\nsyscw: 20\nread_bytes: 0\n\
         write_bytes: 4096\ncancelled_write_bytes: 0\n",
    );
    assert_eq!(io["write_bytes"], 4096.0);
    assert_eq!(io["syscw"], 20.0);
    assert_eq!(io.len(), 7);
}

#[test]
fn perf_stat_csv_is_read() {
    // perf 6.1 `perf stat -x, -o FILE -e … -p PID`, stopped by SIGINT.
    let text = "# started on Thu Dec  3 11:39:36 2026\n\n\
                496.28,msec,task-clock,496284069,100.00,0.233,CPUs utilized\n\
                1425,,context-switches,496284069,100.00,2.871,K/sec\n\
                <not counted>,,major-faults,0,100.00,,\n\
                563,,raw_syscalls:sys_enter,496306304,100.00,1.134,K/sec\n\
                2,,syscalls:sys_enter_fdatasync,496310194,100.00,4.030,/sec\n";
    let m = parse_perf_stat(text);
    assert_eq!(m["task-clock"], 496.28);
    assert_eq!(m["raw_syscalls:sys_enter"], 563.0);
    assert_eq!(m["syscalls:sys_enter_fdatasync"], 2.0);
    assert!(!m.contains_key("major-faults"));
    assert_eq!(m.len(), 4);
}

#[test]
fn paths_are_classed_without_ids() {
    let d = "/tmp/healthfed-bench-x/clinic-north/data";
    assert_eq!(
        path_class(&format!(
            "{d}/store/spool/inbox/0f1e2d3c4b5a69788796a5b4c3d2e1f0.partial.17"
        )),
        "store/spool/inbox/*.partial.*"
    );
    assert_eq!(
        path_class(&format!(
            "{d}/spool/outbox/0f1e2d3c4b5a69788796a5b4c3d2e1f0.13058-35.partial"
        )),
        "spool/outbox/*.*-*.partial"
    );
    assert_eq!(path_class(&format!("{d}/sled/blobs")), "sled/blobs");
    assert_eq!(path_class(&format!("{d}/store/db")), "store/db");
    assert_eq!(
        path_class(&format!("{d}/store/snap.00000000001A2B3C")),
        "store/snap.*"
    );
    assert_eq!(path_class(d), "data/");
    assert_eq!(path_class("socket:[123456]"), "socket");
    assert_eq!(path_class("/etc/ld.so.cache"), "(outside the data dir)");
}

#[test]
fn strace_output_is_counted_by_kind_target_and_directory() {
    // strace 6.1 `-f -qq -y -s 0 -e signal=none -o FILE -p PID`, two threads interleaving.
    let d = "/tmp/b/clinic-north/data";
    let text = format!(
        "101 epoll_wait(3<anon_inode:[eventpoll]>, [], 1024, 0) = 0\n\
         101 read(9<socket:[77]>, \"\"..., 8192) = -1 EAGAIN (Resource temporarily unavailable)\n\
         102 openat(AT_FDCWD</tmp/b/clinic-north>, \"{d}/store/spool/inbox/aabbccddeeff0011.partial.3\", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600 <unfinished ...>\n\
         101 write(9<socket:[77]>, \"\"..., 120) = 120\n\
         102 <... openat resumed>) = 12<{d}/store/spool/inbox/aabbccddeeff0011.partial.3>\n\
         102 fdatasync(12<{d}/store/spool/inbox/aabbccddeeff0011.partial.3> <unfinished ...>\n\
         103 fdatasync(7<{d}/store/db>) = 0\n\
         102 <... fdatasync resumed>) = 0\n\
         102 rename(\"{d}/store/spool/inbox/aabbccddeeff0011.partial.3\", \"{d}/store/spool/inbox/aabbccddeeff0011\") = 0\n\
         102 openat(AT_FDCWD</tmp/b/clinic-north>, \"{d}/store/db\", O_RDONLY|O_CLOEXEC) = 13<{d}/store/db>\n\
         102 unlinkat(5<{d}/uploads>, \"aabbccdd0011eeff\", 0) = -1 ENOENT (No such file or directory)\n\
         102 futex(0x7f00, FUTEX_WAIT_BITSET_PRIVATE, 0, NULL <unfinished ...>\n\
         102 <... futex resumed>) = -1 EAGAIN (Resource temporarily unavailable)\n\
         +++ exited with 0 +++\n"
    );
    let c = parse_strace(&text);
    let n = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(n(&c.calls, "openat"), 2.0);
    assert_eq!(n(&c.calls, "fdatasync"), 2.0);
    assert_eq!(c.calls.values().sum::<f64>(), 10.0);
    assert_eq!(n(&c.errors, "read"), 1.0);
    assert_eq!(n(&c.errors, "futex"), 1.0);
    assert_eq!(n(&c.errors, "unlinkat"), 1.0);
    assert_eq!(c.errors.values().sum::<f64>(), 3.0);
    assert_eq!(n(&c.syncs, "fdatasync store/spool/inbox/*.partial.*"), 1.0);
    assert_eq!(n(&c.syncs, "fdatasync store/db"), 1.0);
    assert_eq!(c.created.len(), 1);
    assert_eq!(n(&c.created, "store/spool/inbox/*.partial.*"), 1.0);
    assert_eq!(n(&c.renamed, "store/spool/inbox/*"), 1.0);
    assert_eq!(n(&c.removed, "uploads/*"), 1.0);
}

#[test]
fn idle_background_is_subtracted_as_a_rate() {
    let w = BTreeMap::from([("futex".to_owned(), 120.0), ("fdatasync".to_owned(), 40.0)]);
    let i = BTreeMap::from([("futex".to_owned(), 10.0), ("timerfd".to_owned(), 2.0)]);
    // A 2 s window against a 1 s idle window, 10 transfers.
    let m = per_transfer_map(&w, 2.0, &i, 1.0, 10);
    assert_eq!(m["futex"], 10.0);
    assert_eq!(m["fdatasync"], 4.0);
    assert_eq!(m["timerfd"], -0.4);
}
