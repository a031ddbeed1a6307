//! Untrusted bytes through `decode`, and whatever decodes through `letterbox`: neither may
//! panic, hang or allocate past the limits, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plenum_vision::{Limits, decode, letterbox};

fuzz_target!(|data: &[u8]| {
    // Small limits keep each run fast; the code paths are the same as with the defaults.
    let limits = Limits {
        max_bytes: 256 * 1024,
        max_pixels: 512 * 512,
    };
    if let Ok(decoded) = decode(data, &limits) {
        assert_eq!(decoded.image.dimensions(), (decoded.width, decoded.height));
        assert!(u64::from(decoded.width) * u64::from(decoded.height) <= limits.max_pixels);
        let boxed = letterbox(&decoded.image, 64, 64);
        assert_eq!(boxed.image.dimensions(), (64, 64));
    }
});
