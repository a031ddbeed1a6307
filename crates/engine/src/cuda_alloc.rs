//! libtorch's CUDA caching allocator, which tch does not expose, through a small C++
//! shim (`cpp/cuda_alloc_shim.cpp`, built where libtorch has CUDA): its statistics
//! for the memory profile on a GPU, `emptyCache` after an out-of-memory, and a cap that
//! follows the leases.
//!
//! The cap: `PYTORCH_ALLOC_CONF` ([`crate::cuda_cap`]) fixes a fraction once, at start,
//! from everything the process may ever lease. The leases themselves grow and shrink: a
//! model promoted or offloaded, a peak lease for one call. Each engine tells [`held`]
//! what its leases grant it on a device; the process's sum, over the device's memory,
//! becomes the allocator's `setMemoryFraction` there, so an allocation past the leases
//! held now is an out-of-memory error inside that request.

// The shim's C calls; each is one line, its safety argued where it is made.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Bytes on one CUDA device, as the allocator counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Allocated by tensors now.
    pub allocated: u64,
    /// The most allocated since the last [`reset_peak`].
    pub peak: u64,
    /// The device's memory.
    pub total: u64,
}

#[cfg(plenum_cuda_alloc)]
mod shim {
    use std::ffi::c_char;

    unsafe extern "C" {
        pub fn plenum_cuda_device_count() -> i32;
        pub fn plenum_cuda_set_memory_fraction(device: i32, fraction: f64) -> *mut c_char;
        pub fn plenum_cuda_empty_cache() -> *mut c_char;
        pub fn plenum_cuda_memory(
            device: i32,
            allocated: *mut u64,
            peak: *mut u64,
            total: *mut u64,
        ) -> *mut c_char;
        pub fn plenum_cuda_reset_peak(device: i32) -> *mut c_char;
    }

    /// The shim's answer: null for success, else its message (freed here).
    pub fn answer(error: *mut c_char) -> Result<(), String> {
        if error.is_null() {
            Ok(())
        } else {
            Err(crate::aoti::take_error(error))
        }
    }
}

#[cfg(not(plenum_cuda_alloc))]
const NOT_BUILT: &str = "built against a libtorch without CUDA: no allocator shim";

/// CUDA devices this process sees (0 without a driver, a GPU, or the shim).
pub fn device_count() -> usize {
    #[cfg(plenum_cuda_alloc)]
    // SAFETY: takes nothing, catches every C++ exception.
    return unsafe { shim::plenum_cuda_device_count() }.max(0) as usize;
    #[cfg(not(plenum_cuda_alloc))]
    0
}

/// Whether the shim was built (libtorch with CUDA).
pub fn built() -> bool {
    cfg!(plenum_cuda_alloc)
}

/// Caps the allocator on `device` at `fraction` of its memory. Fails until a tensor
/// has been on that device (the allocator starts lazily).
pub fn set_memory_fraction(device: usize, fraction: f64) -> Result<(), String> {
    #[cfg(plenum_cuda_alloc)]
    // SAFETY: plain values in; the shim catches every C++ exception.
    return shim::answer(unsafe { shim::plenum_cuda_set_memory_fraction(device as i32, fraction) });
    #[cfg(not(plenum_cuda_alloc))]
    {
        let _ = (device, fraction);
        Err(NOT_BUILT.into())
    }
}

/// Gives the allocator's cached, unused blocks back to the driver.
pub fn empty_cache() -> Result<(), String> {
    #[cfg(plenum_cuda_alloc)]
    // SAFETY: takes nothing; the shim catches every C++ exception.
    return shim::answer(unsafe { shim::plenum_cuda_empty_cache() });
    #[cfg(not(plenum_cuda_alloc))]
    Err(NOT_BUILT.into())
}

/// What the allocator holds on `device`.
pub fn memory(device: usize) -> Result<DeviceMemory, String> {
    #[cfg(plenum_cuda_alloc)]
    {
        let (mut allocated, mut peak, mut total) = (0, 0, 0);
        // SAFETY: the three pointers are live locals; the shim catches every exception.
        shim::answer(unsafe {
            shim::plenum_cuda_memory(device as i32, &mut allocated, &mut peak, &mut total)
        })?;
        Ok(DeviceMemory {
            allocated,
            peak,
            total,
        })
    }
    #[cfg(not(plenum_cuda_alloc))]
    {
        let _ = device;
        Err(NOT_BUILT.into())
    }
}

/// Starts a new peak on `device` from what is allocated now.
pub fn reset_peak(device: usize) -> Result<(), String> {
    #[cfg(plenum_cuda_alloc)]
    // SAFETY: a plain value in; the shim catches every C++ exception.
    return shim::answer(unsafe { shim::plenum_cuda_reset_peak(device as i32) });
    #[cfg(not(plenum_cuda_alloc))]
    {
        let _ = device;
        Err(NOT_BUILT.into())
    }
}

/// The working memory of one call on `device`: the allocator's peak during `call`
/// above what was allocated before it.
pub fn peak_growth<T>(
    device: usize,
    call: impl FnOnce() -> Result<T, String>,
) -> Result<u64, String> {
    let before = memory(device)?.allocated;
    reset_peak(device)?;
    call()?;
    Ok(memory(device)?.peak.saturating_sub(before))
}

/// What each holder (an engine's model, or one call's peak) is granted per device.
static HELD: Mutex<BTreeMap<String, (usize, u64)>> = Mutex::new(BTreeMap::new());

/// Records that `holder`'s leases grant it `bytes` on `device` (0 when it holds none)
/// and caps the allocator there at the process's sum. On a machine without CUDA (or
/// the shim) only the books change.
pub fn held(holder: &str, device: usize, bytes: u64) {
    let sum = {
        let mut books = HELD.lock().unwrap_or_else(|poison| poison.into_inner());
        if bytes == 0 {
            books.remove(holder);
        } else {
            books.insert(holder.to_owned(), (device, bytes));
        }
        held_on(&books, device)
    };
    if sum == 0 || device >= device_count() {
        return; // nothing of ours there to cap, or no CUDA
    }
    let applied = memory(device).and_then(|memory| {
        let fraction = fraction(sum, memory.total);
        set_memory_fraction(device, fraction).map(|()| fraction)
    });
    match applied {
        Ok(fraction) => {
            tracing::debug!(device, sum, fraction, "CUDA allocator capped at the leases")
        }
        Err(error) => {
            tracing::warn!(device, sum, %error, "could not cap the CUDA allocator at the leases")
        }
    }
}

/// Forgets `holder` (its model left the GPU, its call ended) and caps the device it
/// was on at what the others hold.
pub fn released(holder: &str) {
    let device = {
        let books = HELD.lock().unwrap_or_else(|poison| poison.into_inner());
        books.get(holder).map(|(device, _)| *device)
    };
    if let Some(device) = device {
        held(holder, device, 0);
    }
}

/// Bytes held for as long as the value lives: one call's peak lease.
#[derive(Debug)]
pub struct Hold {
    holder: String,
}

impl Hold {
    pub fn new(holder: String, device: usize, bytes: u64) -> Self {
        held(&holder, device, bytes);
        Self { holder }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        released(&self.holder);
    }
}

fn held_on(books: &BTreeMap<String, (usize, u64)>, device: usize) -> u64 {
    books
        .values()
        .filter(|(on, _)| *on == device)
        .map(|(_, bytes)| bytes)
        .sum()
}

/// `bytes` of a device of `total` as the allocator's fraction, at most all of it.
fn fraction(bytes: u64, total: u64) -> f64 {
    if total == 0 {
        return 1.0;
    }
    (bytes as f64 / total as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fraction_is_the_leases_over_the_device_and_never_more_than_all() {
        assert_eq!(fraction(2 << 30, 8 << 30), 0.25);
        assert_eq!(fraction(9 << 30, 8 << 30), 1.0);
        assert_eq!(fraction(1, 0), 1.0);
    }

    #[test]
    fn the_books_sum_each_device_and_forget_a_holder_at_zero() {
        held("test-a", 7, 100);
        held("test-b", 7, 50);
        held("test-c", 8, 25);
        let books = HELD.lock().unwrap().clone();
        assert_eq!(held_on(&books, 7), 150);
        assert_eq!(held_on(&books, 8), 25);
        held("test-a", 7, 0);
        let books = HELD.lock().unwrap().clone();
        assert_eq!(held_on(&books, 7), 50);
        assert!(!books.contains_key("test-a"));
        released("test-b");
        {
            let _peak = Hold::new("test-peak".into(), 8, 75);
            assert_eq!(held_on(&HELD.lock().unwrap(), 8), 100);
        }
        assert_eq!(
            held_on(&HELD.lock().unwrap(), 8),
            25,
            "a hold ends with its value"
        );
        held("test-c", 8, 0);
        assert_eq!(held_on(&HELD.lock().unwrap(), 7), 0);
    }

    #[test]
    fn without_a_gpu_every_call_says_why_and_nothing_crashes() {
        // This machine's libtorch has CUDA but there is no driver or GPU: the shim is
        // built, sees no device, and the allocator never started.
        assert_eq!(device_count(), 0);
        for error in [
            set_memory_fraction(0, 0.5).unwrap_err(),
            memory(0).unwrap_err(),
            reset_peak(0).unwrap_err(),
        ] {
            assert!(!error.is_empty());
            // Built against this project's libtorch (PyPI's CUDA wheel), the answer is
            // libtorch's own, not the build's excuse.
            if built() {
                assert!(!error.contains("no allocator shim"), "{error}");
            }
        }
        assert!(peak_growth(0, || Ok(())).is_err());
    }
}
