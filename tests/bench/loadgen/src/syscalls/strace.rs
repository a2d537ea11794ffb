//! Reading `strace -f -y -s 0 -o` output (`--syscalls`): calls and errors by kind, and what
//! the calls that make a transfer durable act on, with paths classed without their ids.

use std::collections::BTreeMap;

/// The syscalls that make data durable.
const SYNCS: [&str; 5] = ["fsync", "fdatasync", "sync_file_range", "syncfs", "msync"];

/// What one strace window saw on one node.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct StraceCounts {
    /// Calls by syscall name.
    pub calls: BTreeMap<String, f64>,
    /// Calls that returned -1, by syscall name.
    pub errors: BTreeMap<String, f64>,
    /// `fdatasync <target class>` etc.: sync calls by what they synced.
    pub syncs: BTreeMap<String, f64>,
    /// Files opened with O_CREAT (or made by mkdir), by directory class.
    pub created: BTreeMap<String, f64>,
    /// Renames, by the class of the new name.
    pub renamed: BTreeMap<String, f64>,
    /// unlink/unlinkat/rmdir, by class.
    pub removed: BTreeMap<String, f64>,
}

/// A path as a class that does not depend on ids: the part after the node's `data/`, with
/// runs of 6 or more hex digits and trailing `.<digits>` replaced by `*`; sockets, pipes and
/// anonymous inodes by their kind.
pub(crate) fn path_class(path: &str) -> String {
    if let Some((kind, _)) = path.split_once(":[") {
        return kind.to_owned();
    }
    let rel = match path.rfind("/data/") {
        Some(i) => &path[i + "/data/".len()..],
        None if path.ends_with("/data") => return "data/".to_owned(),
        None => return "(outside the data dir)".to_owned(),
    };
    let mut out = String::new();
    for (i, comp) in rel.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&without_ids(comp));
    }
    out
}

/// A path component with its ids replaced by `*`: runs of 6 or more hex digits first (transfer
/// ids, sled snapshot numbers), then any other run of digits (`.partial.17`, `.13058-35.`).
fn without_ids(comp: &str) -> String {
    let mut hex = String::new();
    let mut run = String::new();
    let flush = |out: &mut String, run: &mut String| {
        out.push_str(if run.len() >= 6 { "*" } else { run.as_str() });
        run.clear();
    };
    for ch in comp.chars() {
        if ch.is_ascii_hexdigit() {
            run.push(ch);
        } else {
            flush(&mut hex, &mut run);
            hex.push(ch);
        }
    }
    flush(&mut hex, &mut run);
    let mut out = String::new();
    let mut in_digits = false;
    for ch in hex.chars() {
        if ch.is_ascii_digit() {
            if !in_digits {
                out.push('*');
            }
            in_digits = true;
        } else {
            out.push(ch);
            in_digits = false;
        }
    }
    out
}

/// The path strace -y prints for the first fd argument: `7</a/b>` → `/a/b`.
fn first_fd_path(args: &str) -> Option<&str> {
    let start = args.find('<')? + 1;
    let end = start + args[start..].find('>')?;
    Some(&args[start..end])
}

/// The quoted strings (file names: strace prints those in full whatever `-s` says) of a
/// syscall's arguments.
fn quoted(args: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = args;
    while let Some(i) = rest.find('"') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('"') else { break };
        out.push(&after[..j]);
        rest = &after[j + 1..];
    }
    out
}

/// A quoted file name made absolute against the directory strace -y printed for the dirfd
/// (`AT_FDCWD</dir>` or `5</dir>`) when it is relative.
fn resolved(args: &str, name: &str) -> String {
    if name.starts_with('/') {
        return name.to_owned();
    }
    match first_fd_path(args) {
        Some(dir) => format!("{dir}/{name}"),
        None => name.to_owned(),
    }
}

/// Reads `strace -f -y -o` output: `PID name(args) = result`, with `<unfinished ...>` and
/// `<... name resumed>` halves when threads interleave (a call is counted at its start, its
/// error at whichever half carries the result).
pub(crate) fn parse_strace(text: &str) -> StraceCounts {
    let mut c = StraceCounts::default();
    let bump = |m: &mut BTreeMap<String, f64>, k: String| *m.entry(k).or_default() += 1.0;
    for line in text.lines() {
        let line = match line.split_once(' ') {
            Some((pid, rest)) if pid.chars().all(|ch| ch.is_ascii_digit()) => rest.trim_start(),
            _ => line,
        };
        let failed = |l: &str| {
            l.rsplit_once(") = ")
                .or_else(|| l.rsplit_once(" = "))
                .is_some_and(|(_, r)| r.trim_start().starts_with("-1 "))
        };
        if let Some(rest) = line.strip_prefix("<... ") {
            if let Some((name, _)) = rest.split_once(" resumed>") {
                if failed(rest) {
                    bump(&mut c.errors, name.to_owned());
                }
            }
            continue;
        }
        if line.starts_with("---") || line.starts_with("+++") {
            continue;
        }
        let Some((name, args)) = line.split_once('(') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            continue;
        }
        bump(&mut c.calls, name.to_owned());
        if !line.ends_with("<unfinished ...>") && failed(line) {
            bump(&mut c.errors, name.to_owned());
        }
        let names = quoted(args);
        match name {
            n if SYNCS.contains(&n) => {
                let target = first_fd_path(args).map_or_else(|| "?".to_owned(), path_class);
                bump(&mut c.syncs, format!("{n} {target}"));
            }
            "open" | "openat" | "creat" if name == "creat" || args.contains("O_CREAT") => {
                if let Some(f) = names.first() {
                    bump(&mut c.created, path_class(&resolved(args, f)));
                }
            }
            "mkdir" | "mkdirat" => {
                if let Some(f) = names.first() {
                    bump(
                        &mut c.created,
                        format!("{}/ (dir)", path_class(&resolved(args, f))),
                    );
                }
            }
            "rename" | "renameat" | "renameat2" => {
                if let Some(f) = names.last() {
                    bump(&mut c.renamed, path_class(f));
                }
            }
            "unlink" | "unlinkat" | "rmdir" => {
                if let Some(f) = names.first() {
                    bump(&mut c.removed, path_class(&resolved(args, f)));
                }
            }
            _ => {}
        }
    }
    c
}
