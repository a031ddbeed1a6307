// libtorch's CUDA caching allocator, which tch does not expose: its statistics (the
// memory profile on a GPU), its per-process cap (setMemoryFraction, following the
// leases), and emptyCache (after an out-of-memory). Built only against a libtorch with
// libc10_cuda (see build.rs). Errors cross as a malloc'd message the caller frees with
// plenum_aoti_free_error; no C++ exception leaves this file.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

namespace allocator = c10::cuda::CUDACachingAllocator;

#include "shim_error.h"

namespace {
using plenum::copy_message;

template <typename F>
char* guarded(F call) {
    try {
        call();
        return nullptr;
    } catch (const std::exception& e) {
        return copy_message(e.what());
    } catch (...) {
        return copy_message("unknown C++ exception in the CUDA allocator");
    }
}
}  // namespace

extern "C" {

// CUDA devices this process sees; 0 without a driver or a GPU. Never throws.
int plenum_cuda_device_count() {
    try {
        return static_cast<int>(c10::cuda::device_count());
    } catch (...) {
        return 0;
    }
}

// Caps what the allocator may hold on `device` at `fraction` of its memory: an
// allocation past it is an out-of-memory error. The allocator must be initialised
// (a tensor has been on CUDA), else this returns an error.
char* plenum_cuda_set_memory_fraction(int device, double fraction) {
    return guarded([&] {
        allocator::setMemoryFraction(fraction, static_cast<c10::DeviceIndex>(device));
    });
}

// Gives the allocator's cached, unused blocks back to the driver.
char* plenum_cuda_empty_cache() {
    return guarded([] { allocator::emptyCache(); });
}

// Bytes allocated now and at the peak since the last reset, and the device's total.
char* plenum_cuda_memory(int device, uint64_t* allocated, uint64_t* peak, uint64_t* total) {
    return guarded([&] {
        auto index = static_cast<c10::DeviceIndex>(device);
        auto stats = allocator::getDeviceStats(index);
        auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
        *allocated = static_cast<uint64_t>(stats.allocated_bytes[aggregate].current);
        *peak = static_cast<uint64_t>(stats.allocated_bytes[aggregate].peak);
        *total = static_cast<uint64_t>(allocator::get()->getMemoryInfo(index).second);
    });
}

// Starts a new peak from what is allocated now.
char* plenum_cuda_reset_peak(int device) {
    return guarded([&] { allocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); });
}

}  // extern "C"
