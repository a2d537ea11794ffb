//! A DICOM header is untrusted input: an element that claims a length far beyond the bytes
//! present must be refused without the reader allocating what it claims.

#![allow(clippy::unwrap_used, reason = "test")]

fn element(
    out: &mut Vec<u8>,
    group: u16,
    elem: u16,
    vr: &[u8; 2],
    value: &[u8],
    claimed: Option<u32>,
) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&claimed.unwrap_or(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(claimed.unwrap_or(value.len() as u32) as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_claimed_huge_element_is_refused_without_allocating_it() {
    let mut meta = Vec::new();
    element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1], None);
    element(
        &mut meta,
        0x0002,
        0x0002,
        b"UI",
        b"1.2.840.10008.5.1.4.1.1.7\0",
        None,
    );
    element(&mut meta, 0x0002, 0x0003, b"UI", b"1.2.3.4\0", None);
    element(
        &mut meta,
        0x0002,
        0x0010,
        b"UI",
        b"1.2.840.10008.1.2.1\0",
        None,
    );
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    element(
        &mut file,
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
        None,
    );
    file.extend_from_slice(&meta);
    // (0009,1010) a private OB element claiming ~4 GiB, then nothing.
    let mut flat = file.clone();
    element(&mut flat, 0x0009, 0x1010, b"OB", b"abcd", Some(0xFFFF_FFF0));
    // (0008,1140) a sequence of honest length whose one item claims ~4 GiB.
    let mut item = Vec::new();
    item.extend_from_slice(&0xFFFEu16.to_le_bytes());
    item.extend_from_slice(&0xE000u16.to_le_bytes());
    item.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    item.extend_from_slice(b"abcd");
    let mut nested = file.clone();
    element(&mut nested, 0x0008, 0x1140, b"SQ", &item, None);
    for (what, bytes) in [("flat", flat), ("nested", nested)] {
        let before = peak_rss_kib();
        let result = policies::classify::classify_content(&bytes);
        let after = peak_rss_kib();
        assert!(result.is_err(), "{what}: {result:?}");
        assert!(
            after - before < 64 * 1024,
            "{what}: peak RSS grew by {} KiB",
            after - before
        );
    }
}
