//! Admission by bytes: one budget of working memory per service, which every request's
//! in-flight bytes (decoded pixels, model inputs, tiles, crops, the model's activations
//! while it runs on the CPU) are admitted against before the work is done.
//!
//! A request that fits waits for room (FIFO, at most `max_wait`), so concurrent large
//! pages take turns instead of multiplying; one that could never fit is refused at
//! once, naming the bytes. Nothing here allocates the bytes: callers estimate them
//! (see [`crate::memory_profile`] for the model's share) and hold the permit until the
//! work is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budgets are counted in KiB so a `u32` of semaphore permits reaches 4 TiB.
const UNIT: u64 = 1024;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The request alone needs more than the whole budget: retrying will not help.
    #[error(
        "this request needs {bytes} bytes of working memory, more than the service's whole \
         budget of {budget} bytes (--work-memory); send smaller or fewer images"
    )]
    TooLarge { bytes: u64, budget: u64 },
    /// Other requests held the budget for longer than the request may wait.
    #[error(
        "this request needs {bytes} bytes of working memory and the service's budget of \
         {budget} bytes stayed in use by other requests for {waited:?}; retry shortly"
    )]
    Busy {
        bytes: u64,
        budget: u64,
        waited: Duration,
    },
    /// The request alone needs more than the work lease on the GPU, and the broker did
    /// not grant a peak lease for the rest within `--work-wait`.
    #[error(
        "this request needs {bytes} bytes of working memory on the GPU, more than the \
         model's work lease of {budget} bytes, and no peak lease for the rest was \
         granted ({reason}); retry shortly or send a smaller image"
    )]
    PeakRefused {
        bytes: u64,
        budget: u64,
        reason: String,
    },
    /// A single row ran out of device (or host) memory inside the model, after the
    /// batch was halved down to it: the memory others hold may be free later.
    #[error(
        "the model ran out of memory on this input even alone ({detail}); retry shortly or \
         send a smaller image"
    )]
    OutOfMemory { detail: String },
}

/// A service's working-memory budget; cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct WorkBudget {
    budget: u64,
    max_wait: Duration,
    free: Arc<Semaphore>,
}

/// Bytes held against a [`WorkBudget`]; given back on drop.
#[derive(Debug)]
pub struct WorkPermit {
    bytes: u64,
    _held: Option<OwnedSemaphorePermit>,
}

impl WorkPermit {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl WorkBudget {
    /// A budget of `bytes`; a request waits at most `max_wait` for room.
    pub fn new(bytes: u64, max_wait: Duration) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        Self {
            budget: u64::from(units) * UNIT,
            max_wait,
            free: Arc::new(Semaphore::new(units as usize)),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.budget
    }

    /// Bytes held by requests now.
    pub fn in_use(&self) -> u64 {
        self.budget - self.free.available_permits() as u64 * UNIT
    }

    /// Whether a request of `bytes` could ever be admitted.
    pub fn fits(&self, bytes: u64) -> bool {
        bytes <= self.budget
    }

    /// Holds `bytes` of the budget, waiting (first come, first served) up to the
    /// budget's `max_wait` for others to give them back.
    pub async fn admit(&self, bytes: u64) -> Result<WorkPermit, AdmissionError> {
        if !self.fits(bytes) {
            return Err(AdmissionError::TooLarge {
                bytes,
                budget: self.budget,
            });
        }
        let units = bytes.div_ceil(UNIT) as u32;
        if units == 0 {
            return Ok(WorkPermit { bytes, _held: None });
        }
        let started = Instant::now();
        let held = tokio::time::timeout(
            self.max_wait,
            Arc::clone(&self.free).acquire_many_owned(units),
        )
        .await;
        match held {
            Ok(Ok(held)) => Ok(WorkPermit {
                bytes,
                _held: Some(held),
            }),
            // The semaphore is never closed; a timeout is the only way to get here.
            _ => Err(AdmissionError::Busy {
                bytes,
                budget: self.budget,
                waited: started.elapsed(),
            }),
        }
    }
}

/// Splits items (in order) into runs whose summed cost fits `budget`, so a call with
/// many inputs goes through in turns instead of being refused: `Err(index)` names the
/// first item that alone exceeds the budget.
pub fn split_to_fit(costs: &[u64], budget: u64) -> Result<Vec<std::ops::Range<usize>>, usize> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut sum = 0u64;
    for (index, &cost) in costs.iter().enumerate() {
        if cost > budget {
            return Err(index);
        }
        if sum + cost > budget {
            runs.push(start..index);
            start = index;
            sum = 0;
        }
        sum += cost;
    }
    if start < costs.len() {
        runs.push(start..costs.len());
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_over_the_whole_budget_is_refused_at_once_naming_the_bytes() {
        let budget = WorkBudget::new(1 << 20, Duration::from_secs(60));
        let refused = budget.admit((1 << 20) + 1).await.unwrap_err();
        assert_eq!(
            refused,
            AdmissionError::TooLarge {
                bytes: (1 << 20) + 1,
                budget: 1 << 20
            }
        );
        assert!(refused.to_string().contains("1048577 bytes"));
    }

    #[tokio::test]
    async fn concurrent_requests_take_turns_and_a_long_wait_is_refused() {
        let budget = WorkBudget::new(10 << 20, Duration::from_millis(50));
        let first = budget.admit(6 << 20).await.unwrap();
        assert_eq!(budget.in_use(), 6 << 20);
        // A second large request cannot be held at the same time: it waits, then is
        // refused as busy (with the wait), never admitted on top of the first.
        let second = budget.admit(6 << 20).await.unwrap_err();
        assert!(
            matches!(second, AdmissionError::Busy { waited, .. } if waited >= Duration::from_millis(50))
        );
        // A small one fits beside the first.
        let small = budget.admit(1 << 20).await.unwrap();
        assert_eq!(budget.in_use(), 7 << 20);
        drop(first);
        drop(small);
        assert_eq!(budget.in_use(), 0);
        let again = budget.admit(6 << 20).await.unwrap();
        assert_eq!(again.bytes(), 6 << 20);
    }

    #[tokio::test]
    async fn a_waiting_request_is_admitted_when_the_bytes_come_back() {
        let budget = WorkBudget::new(10 << 20, Duration::from_secs(60));
        let first = budget.admit(8 << 20).await.unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.admit(8 << 20).await.map(|permit| permit.bytes()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(8 << 20));
    }

    #[test]
    fn inputs_are_split_into_runs_that_fit_and_one_too_large_is_named() {
        assert_eq!(
            split_to_fit(&[4, 4, 4, 9, 1], 10),
            Ok(vec![0..2, 2..3, 3..5])
        );
        assert_eq!(split_to_fit(&[], 10), Ok(vec![]));
        assert_eq!(split_to_fit(&[4, 11, 1], 10), Err(1));
    }
}
