//! How much working memory one forward pass of a model takes, measured at load time and
//! fitted as `bytes ≈ fixed + per_element · elements`, where `elements` is the input's
//! element count (rows × channels × height × width).
//!
//! On the CPU (and the simulated GPU, which computes on the CPU) a pass is measured as
//! the growth of the process's peak resident memory: the kernel's high-water mark
//! (`VmHWM`) is reset through `/proc/self/clear_refs` just before the pass and read
//! just after. That sees everything the pass touches (libtorch's allocator, oneDNN
//! scratch, OpenMP buffers), where allocator statistics would miss the last two and tch
//! exposes none. The allocator's free memory is handed back to the kernel first
//! (`malloc_trim`), so memory a pass reuses counts as well. The process is otherwise idle while a model loads and profiles run
//! one at a time (a process-wide lock), and each size is measured twice keeping the
//! smaller, so one-time costs of the first pass at a new shape do not count.
//! On CUDA the pass allocates on the GPU: the worker reads the caching allocator's peak
//! instead, through [`crate::cuda_alloc`] (tch exposes no allocator statistics).

use std::sync::{Arc, Mutex, RwLock};

/// One measured pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Input elements (rows × the rest of the shape).
    pub elements: u64,
    pub bytes: u64,
}

/// The fitted working memory of a model's forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryProfile {
    /// Bytes every pass takes whatever its input.
    pub fixed: f64,
    /// Bytes per input element.
    pub per_element: f64,
    pub samples: Vec<Sample>,
}

impl MemoryProfile {
    /// Least squares over `samples`; both coefficients kept at or above zero (memory
    /// never shrinks with input). `None` without two distinct sizes to fit a slope to.
    pub fn fit(samples: Vec<Sample>) -> Option<Self> {
        let n = samples.len() as f64;
        let mean_x = samples.iter().map(|s| s.elements as f64).sum::<f64>() / n;
        let mean_y = samples.iter().map(|s| s.bytes as f64).sum::<f64>() / n;
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for sample in &samples {
            let dx = sample.elements as f64 - mean_x;
            sxx += dx * dx;
            sxy += dx * (sample.bytes as f64 - mean_y);
        }
        if samples.len() < 2 || sxx == 0.0 {
            return None;
        }
        let mut per_element = (sxy / sxx).max(0.0);
        let mut fixed = mean_y - per_element * mean_x;
        if fixed < 0.0 {
            // Through the origin instead: the best slope with no fixed part.
            fixed = 0.0;
            let sxx0: f64 = samples.iter().map(|s| (s.elements as f64).powi(2)).sum();
            let sxy0: f64 = samples
                .iter()
                .map(|s| s.elements as f64 * s.bytes as f64)
                .sum();
            per_element = (sxy0 / sxx0).max(0.0);
        }
        Some(Self {
            fixed,
            per_element,
            samples,
        })
    }

    /// The predicted working memory of a pass over `elements` input elements.
    pub fn bytes(&self, elements: u64) -> u64 {
        (self.fixed + self.per_element * elements as f64).ceil() as u64
    }

    /// The largest relative error of the fit at the measured sizes (0.1 = 10%).
    pub fn max_error(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| {
                let predicted = self.bytes(s.elements) as f64;
                (predicted - s.bytes as f64).abs() / (s.bytes as f64).max(1.0)
            })
            .fold(0.0, f64::max)
    }
}

/// The engine's profile, shared between its thread (which measures it and splits
/// batches by it) and its handle (which estimates requests with it).
pub type SharedProfile = Arc<RwLock<Option<MemoryProfile>>>;

/// Input shapes to profile a model at, from its warmup shape: the dynamic sides at
/// ½, 1 and 1½ of the warmup size with one row, and the warmup size with two rows.
/// A model without dynamic sides varies only its rows: 1, 2 and 4.
pub fn profile_shapes(warmup: &[i64], dynamic: &[bool]) -> Vec<Vec<i64>> {
    let with = |rows: i64, scale: f64| -> Vec<i64> {
        warmup
            .iter()
            .zip(dynamic.iter().chain(std::iter::repeat(&false)))
            .enumerate()
            .map(|(axis, (&dim, &dynamic))| match axis {
                0 => rows,
                // Multiples of 32, a multiple of every stride in use.
                _ if dynamic => (((dim as f64 * scale) / 32.0).round() as i64).max(1) * 32,
                _ => dim,
            })
            .collect()
    };
    if dynamic.iter().skip(1).any(|&d| d) {
        // Smallest first: each pass needs more than any before it.
        vec![with(1, 0.5), with(1, 1.0), with(2, 1.0), with(1, 1.5)]
    } else {
        vec![with(1, 1.0), with(2, 1.0), with(4, 1.0)]
    }
}

/// Elements of an input of `shape`.
pub fn elements(shape: &[i64]) -> u64 {
    shape.iter().map(|&d| d.max(0) as u64).product()
}

/// Profiles run one at a time in a process, so one model's pass never shows in
/// another's high-water mark.
static PROFILING: Mutex<()> = Mutex::new(());

/// Peak resident growth of `pass`, in bytes, on Linux; `None` where the high-water
/// mark cannot be reset.
pub fn peak_growth(pass: impl FnOnce() -> Result<(), String>) -> Result<Option<u64>, String> {
    let _one_at_a_time = PROFILING
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    release_free_heap();
    let Some(before) = status_kib("VmRSS") else {
        pass()?;
        return Ok(None);
    };
    // "5" resets VmHWM to the current RSS (Linux ≥ 4.0).
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        pass()?;
        return Ok(None);
    }
    pass()?;
    Ok(status_kib("VmHWM").map(|peak| peak.saturating_sub(before) * 1024))
}

/// Called once a profile's passes are done (not between them: an input allocated from
/// the heap between passes hides the next pass's growth). Serving must not keep the
/// measuring threshold: with every block over 128 KiB mapped fresh and unmapped when
/// freed, each tensor pays its page faults again, and the detector under the chaos
/// suite's load answered too late (6 of 20 calls past a 3 s deadline). 32 MiB is the
/// highest threshold glibc's own adjustment reaches, so serving reuses freed
/// activations as it did before profiles existed.
#[allow(unsafe_code)]
pub fn restore_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes allocator policy only; thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    }
}

/// Hands the allocator's free pages back to the kernel, so a pass that reuses memory
/// an earlier one freed shows as growth too. glibc keeps freed memory resident (and
/// raises its mmap threshold after each large free, up to 32 MiB, so later large
/// blocks come from retained heap): the threshold is pinned at 128 KiB instead, so
/// every large block (libtorch's tensors) is mapped fresh and unmapped when freed.
/// It is set back for serving once the profile is done ([`restore_mmap_threshold`]).
#[allow(unsafe_code)]
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt and malloc_trim change allocator policy and return free memory
    // to the kernel; they touch no allocation in use and are thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::malloc_trim(0);
    }
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(elements: u64, bytes: u64) -> Sample {
        Sample { elements, bytes }
    }

    #[test]
    fn the_fit_recovers_a_line_and_reports_its_error() {
        let profile = MemoryProfile::fit(vec![
            sample(100, 1_000 + 4 * 100),
            sample(400, 1_000 + 4 * 400),
            sample(900, 1_000 + 4 * 900),
        ])
        .unwrap();
        assert!((profile.fixed - 1_000.0).abs() < 1e-6);
        assert!((profile.per_element - 4.0).abs() < 1e-9);
        assert_eq!(profile.bytes(1_000), 5_000);
        assert!(profile.max_error() < 1e-9);
    }

    #[test]
    fn a_noisy_fit_states_its_error_and_never_goes_negative() {
        let profile = MemoryProfile::fit(vec![
            sample(100, 500),
            sample(200, 1_500),
            sample(300, 1_600),
        ])
        .unwrap();
        assert!(profile.fixed >= 0.0 && profile.per_element >= 0.0);
        assert!(profile.max_error() > 0.05);
        // Memory that does not grow with the input: a flat line, not a negative slope.
        let flat = MemoryProfile::fit(vec![sample(100, 900), sample(200, 800)]).unwrap();
        assert_eq!(flat.per_element, 0.0);
        assert!(flat.bytes(10_000) >= 800);
    }

    #[test]
    fn one_size_is_not_enough_to_fit() {
        assert_eq!(MemoryProfile::fit(vec![sample(100, 1_000)]), None);
        assert_eq!(
            MemoryProfile::fit(vec![sample(100, 1_000), sample(100, 1_100)]),
            None
        );
    }

    #[test]
    fn shapes_vary_the_dynamic_sides_and_the_rows() {
        let shapes = profile_shapes(&[1, 3, 640, 640], &[true, false, true, true]);
        assert_eq!(
            shapes,
            vec![
                vec![1, 3, 320, 320],
                vec![1, 3, 640, 640],
                vec![2, 3, 640, 640],
                vec![1, 3, 960, 960]
            ]
        );
        let fixed = profile_shapes(&[1, 3, 48, 192], &[true, false, false, false]);
        assert_eq!(
            fixed,
            vec![
                vec![1, 3, 48, 192],
                vec![2, 3, 48, 192],
                vec![4, 3, 48, 192]
            ]
        );
        assert_eq!(elements(&[2, 3, 640, 640]), 2 * 3 * 640 * 640);
    }

    #[test]
    fn peak_growth_sees_a_large_allocation() {
        let grown = peak_growth(|| {
            let block = vec![1u8; 64 << 20];
            std::hint::black_box(&block);
            Ok(())
        })
        .unwrap();
        if let Some(grown) = grown {
            assert!(grown >= 60 << 20, "saw {grown} bytes");
        }
    }
}
