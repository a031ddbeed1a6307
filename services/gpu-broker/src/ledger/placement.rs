//! Which device a grant goes to, when the holder names none.

/// A device that may take a request, as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub index: u32,
    /// Bytes the device can still lease.
    pub free: u64,
    /// Leases booked on it (not being released).
    pub leases: usize,
}

/// Best fit: among the devices with room for `bytes`, the one left with the least
/// free after the grant, so the large holes stay whole for the large models. Ties
/// go to the device with fewer leases (fewer holders share its memory and its
/// revocations), then to the lower index, so the choice is deterministic.
pub(crate) fn best_fit(candidates: impl IntoIterator<Item = Candidate>, bytes: u64) -> Option<u32> {
    candidates
        .into_iter()
        .filter(|candidate| candidate.free >= bytes)
        .min_by_key(|candidate| (candidate.free - bytes, candidate.leases, candidate.index))
        .map(|candidate| candidate.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: u32, free: u64, leases: usize) -> Candidate {
        Candidate {
            index,
            free,
            leases,
        }
    }

    #[test]
    fn the_tightest_fit_wins() {
        let devices = [device(0, 7, 0), device(1, 5, 3), device(2, 3, 0)];
        assert_eq!(best_fit(devices, 4), Some(1));
        assert_eq!(best_fit(devices, 3), Some(2));
        assert_eq!(best_fit(devices, 6), Some(0));
        assert_eq!(best_fit(devices, 8), None);
    }

    #[test]
    fn ties_go_to_fewer_leases_then_the_lower_index() {
        assert_eq!(best_fit([device(0, 5, 2), device(1, 5, 1)], 1), Some(1));
        assert_eq!(best_fit([device(0, 5, 1), device(1, 5, 1)], 1), Some(0));
    }
}
