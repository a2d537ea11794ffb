#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static WORLD: OnceLock<healthfed_fuzz::World> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let world = WORLD.get_or_init(|| {
        healthfed_fuzz::World::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"))
            .unwrap_or_else(|e| panic!("tests/fuzz/seeds: {e}"))
    });
    let _ = healthfed_fuzz::directory_payload(world, data);
});
