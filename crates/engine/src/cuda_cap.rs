//! A hard cap on what a model service's CUDA caching allocator may hold: the most its
//! leases can ever grant it (every model's weights estimate plus its work lease),
//! as a fraction of the device's memory. libtorch 2.11 reads
//! `PYTORCH_ALLOC_CONF=per_process_memory_fraction:F` once, when its CUDA allocator
//! starts (`c10/cuda/CUDAAllocatorConfig.h`), so the variable is set before libtorch
//! loads: [`crate::serving::main`] re-executes the binary with it, as it does for
//! libgomp's wait policy. An allocation past the cap is a CUDA out-of-memory error
//! inside that request, which the engine halves and then refuses with
//! `RESOURCE_EXHAUSTED`; the process, and every other process on the card, carry on.
//!
//! This is the cap at start, before any lease. Once models hold leases the cap follows
//! them through `setMemoryFraction` ([`crate::cuda_alloc`]): offloads and revocations
//! lower it, a peak lease raises it for one call.

/// The variable libtorch's allocator reads its configuration from.
pub const ALLOC_CONF: &str = "PYTORCH_ALLOC_CONF";
/// Its older name, still read by libtorch 2.11.
const LEGACY_ALLOC_CONF: &str = "PYTORCH_CUDA_ALLOC_CONF";
const FRACTION_KEY: &str = "per_process_memory_fraction";

/// The allocator configuration that caps a process planning to lease `plan_bytes` on
/// devices of which the smallest has `smallest_device_bytes`, merged into the
/// operator's `existing` configuration. `None` when there is nothing to cap (the plan
/// fills the device) or the operator already set a fraction (theirs wins).
pub fn capped_conf(
    existing: Option<&str>,
    plan_bytes: u64,
    smallest_device_bytes: u64,
) -> Option<String> {
    if existing.is_some_and(|conf| conf.contains(FRACTION_KEY)) || smallest_device_bytes == 0 {
        return None;
    }
    // The fraction applies to every device alike: taken of the smallest, it never caps
    // a process below its plan.
    let fraction = plan_bytes as f64 / smallest_device_bytes as f64;
    if fraction >= 1.0 {
        return None;
    }
    // Rounded up, so rounding never takes a byte off the plan.
    let fraction = (fraction * 10_000.0).ceil() / 10_000.0;
    let cap = format!("{FRACTION_KEY}:{fraction}");
    Some(match existing.filter(|conf| !conf.trim().is_empty()) {
        Some(conf) => format!("{conf},{cap}"),
        None => cap,
    })
}

/// The operator's allocator configuration, under either name.
pub fn existing_conf() -> Option<String> {
    std::env::var(ALLOC_CONF)
        .ok()
        .or_else(|| std::env::var(LEGACY_ALLOC_CONF).ok())
}

/// The memory of the smallest NVIDIA device NVML sees; `None` without NVML or devices
/// (then there is no CUDA allocator to cap).
pub fn smallest_device_bytes() -> Option<u64> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let count = nvml.device_count().ok()?;
    (0..count)
        .filter_map(|index| nvml.device_by_index(index).ok()?.memory_info().ok())
        .map(|memory| memory.total)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Precision;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_cap_is_the_plan_as_a_fraction_of_the_smallest_device_rounded_up() {
        // The OCR service's default plan (det 1 GiB, rec 512 MiB, cls 128 MiB, each
        // with as much again for work) on an 8 GiB GTX 1070.
        let plan = 2 * (GIB + GIB / 2 + GIB / 8);
        assert_eq!(
            capped_conf(None, plan, 8 * GIB).as_deref(),
            Some("per_process_memory_fraction:0.4063")
        );
        let fraction: f64 = "0.4063".parse().unwrap();
        assert!(
            fraction * (8 * GIB) as f64 >= plan as f64,
            "never below the plan"
        );
    }

    #[test]
    fn the_operators_configuration_is_kept_and_their_own_fraction_wins() {
        assert_eq!(
            capped_conf(Some("expandable_segments:True"), GIB, 4 * GIB).as_deref(),
            Some("expandable_segments:True,per_process_memory_fraction:0.25")
        );
        assert_eq!(
            capped_conf(Some("per_process_memory_fraction:0.9"), GIB, 4 * GIB),
            None
        );
        assert_eq!(
            capped_conf(Some(" "), GIB, 4 * GIB).as_deref(),
            Some("per_process_memory_fraction:0.25")
        );
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        engine: crate::EngineArgs,
    }

    /// A model with a 1000-byte fp32 estimate and these variants (one `precision` each).
    fn model(variants: &[(&str, u64)]) -> crate::ModelManifest {
        let variants: String = variants
            .iter()
            .map(|(precision, bytes)| {
                format!(
                    "[[variants]]\nprecision = \"{precision}\"\nfile = \"m.{precision}.pt\"\n\
                     sha256 = \"bbbb\"\nvram_estimate_bytes = {bytes}\n"
                )
            })
            .collect();
        toml::from_str(&format!(
            "name = \"m\"\ntask = \"detect\"\nfile = \"m.pt\"\nsha256 = \"aaaa\"\n\
             vram_estimate_bytes = 1000\n[input]\nshape = [-1, 3, -1, -1]\n{variants}"
        ))
        .unwrap()
    }

    fn flags(flags: &[&str]) -> crate::EngineArgs {
        use clap::Parser as _;
        Flags::try_parse_from(std::iter::once("service").chain(flags.iter().copied()))
            .unwrap()
            .engine
    }

    /// The plan of two models with a 1000-byte fp32 estimate and a 500-byte fp16 one.
    fn plan(args: &[&str]) -> Option<u64> {
        let manifest = model(&[("fp16", 500)]);
        flags(args).gpu_plan(&[manifest.clone(), manifest])
    }

    #[test]
    fn the_plan_is_every_models_weights_and_work_where_cuda_may_be_used() {
        assert_eq!(
            plan(&[]),
            Some(4000),
            "work defaults to the weights' estimate"
        );
        assert_eq!(plan(&["--work-memory", "3000"]), Some(8000));
        assert_eq!(plan(&["--precision", "fp16"]), Some(2000));
        assert_eq!(plan(&["--device", "cuda"]), Some(4000));
        assert_eq!(plan(&["--device", "cpu"]), None);
        assert_eq!(plan(&["--device", "sim-gpu"]), None, "no CUDA allocator");
        assert_eq!(
            plan(&["--precision", "int8"]),
            Some(4000),
            "a model without an int8 variant runs fp32, and may lease"
        );
    }

    #[test]
    fn models_at_int8_are_left_out_of_the_plan() {
        let int8 = flags(&["--precision", "int8"]);
        let listed = model(&[("int8", 0)]);
        let without = model(&[]);
        assert_eq!(listed.runs_at(Precision::Int8), Precision::Int8);
        assert_eq!(without.runs_at(Precision::Int8), Precision::Fp32);
        assert_eq!(int8.gpu_plan(&[listed.clone(), without]), Some(2000));
        assert_eq!(int8.gpu_plan(&[listed]), None, "all int8: CPU only");
    }

    #[test]
    fn a_plan_that_fills_the_device_is_not_capped() {
        assert_eq!(capped_conf(None, 8 * GIB, 8 * GIB), None);
        assert_eq!(capped_conf(None, 9 * GIB, 8 * GIB), None);
        assert_eq!(capped_conf(None, GIB, 0), None);
    }
}
