//! The incremental reader on arbitrary bytes, fed in pieces whose sizes the input chooses.
//! Must never panic; once it errors it must keep returning that error.

#![no_main]

use gateway_envelope::{EnvelopeReader, Limits, MAX_CHUNK_SIZE, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut reader = EnvelopeReader::new(Limits::default());
    let mut failed = None;
    for piece in bytes.chunks(step) {
        reader.push(piece);
        match reader.header() {
            Ok(None) => continue,
            Ok(Some(_)) => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    let metadata = Limits::default().max_metadata as usize;
                    assert!(frame.len() <= (MAX_CHUNK_SIZE as usize).max(metadata) + TAG_LEN);
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_some() {
            break;
        }
    }
    if let Some(e) = failed {
        assert_eq!(reader.next_frame().err(), Some(e));
    }
});
