//! [`StreamCondition`]: ready when the GPU work of the queued messages is done (Holoscan's `CudaStreamCondition`).
//!
//! The newer (Holoscan v3.11) model: several receivers, every queued message inspected by
//! default, never consuming messages. For each queued message with a stream, one host function
//! (`cuLaunchHostFunc`) is enqueued on that stream, once; when the driver runs it, the message
//! is marked done and the [`ConditionNotifier`] wakes the scheduler. Messages that carry only
//! interprocess events are checked with `cuEventQuery` at each `check` (an imported event has no
//! stream of ours to enqueue a host function on).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::CudaError;
use crate::message::{MessageId, MessageQueue, PendingSource};

/// What a condition tells the scheduler (GXF's `SchedulingConditionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulingStatus {
    /// Every inspected message is ready: the operator may run.
    Ready,
    /// Nothing queued: wait for a message.
    Wait,
    /// Messages are queued but their GPU work is not done yet: wait for the notifier.
    WaitEvent,
}

/// Wakes a scheduler when a host function of a [`StreamCondition`] has run.
#[derive(Debug, Default)]
pub struct ConditionNotifier {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl ConditionNotifier {
    fn notify(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        *g += 1;
        self.changed.notify_all();
    }

    /// The number of notifications so far.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the generation differs from `seen` or `timeout` passes; returns the current
    /// generation. (This blocks the *scheduler's* thread, by design, never a compute.)
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> u64 {
        let g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .changed
            .wait_timeout_while(g, timeout, |g| *g == seen)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// The scheduling condition of one operator over one or more input queues.
pub struct StreamCondition {
    receivers: Vec<Arc<dyn PendingSource>>,
    check_all_messages: bool,
    done: HashMap<MessageId, Arc<AtomicBool>>,
    notifier: Arc<ConditionNotifier>,
}

impl std::fmt::Debug for StreamCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCondition")
            .field("receivers", &self.receivers.len())
            .field("check_all_messages", &self.check_all_messages)
            .field("registered", &self.done.len())
            .finish()
    }
}

impl Default for StreamCondition {
    fn default() -> Self {
        StreamCondition {
            receivers: Vec::new(),
            check_all_messages: true,
            done: HashMap::new(),
            notifier: Arc::new(ConditionNotifier::default()),
        }
    }
}

impl StreamCondition {
    /// A condition with no receiver yet; add them with [`StreamCondition::receiver`].
    pub fn new() -> StreamCondition {
        StreamCondition::default()
    }

    /// Adds an input queue to watch.
    pub fn receiver<T: Send + 'static>(mut self, queue: Arc<MessageQueue<T>>) -> StreamCondition {
        self.receivers.push(queue);
        self
    }

    /// With `false`, only the first message of each queue is inspected (Holoscan before v3.11).
    /// Default `true`.
    pub fn check_all_messages(mut self, all: bool) -> StreamCondition {
        self.check_all_messages = all;
        self
    }

    /// The notifier the host functions signal.
    pub fn notifier(&self) -> Arc<ConditionNotifier> {
        self.notifier.clone()
    }

    /// Evaluates the condition: enqueues host functions for newly seen messages, forgets
    /// consumed ones (the reset after execution), and reports the status. Never blocks.
    ///
    /// # Errors
    /// A driver error enqueuing a host function or querying an event.
    pub fn check(&mut self) -> Result<SchedulingStatus, CudaError> {
        let pending: Vec<_> = self
            .receivers
            .iter()
            .flat_map(|r| r.pending(!self.check_all_messages))
            .collect();
        self.done
            .retain(|id, _| pending.iter().any(|p| p.id == *id));
        if pending.is_empty() {
            return Ok(SchedulingStatus::Wait);
        }
        let mut ready = true;
        for p in &pending {
            if let Some(s) = &p.stream {
                let flag = match self.done.get(&p.id) {
                    Some(f) => f.clone(),
                    None => {
                        let flag = Arc::new(AtomicBool::new(false));
                        let (f2, n2) = (flag.clone(), self.notifier.clone());
                        s.launch_host_fn(move || {
                            f2.store(true, Ordering::Release);
                            n2.notify();
                        })?;
                        self.done.insert(p.id, flag.clone());
                        flag
                    }
                };
                ready &= flag.load(Ordering::Acquire);
            }
            for e in &p.events {
                ready &= e.is_complete()?;
            }
        }
        Ok(if ready {
            SchedulingStatus::Ready
        } else {
            SchedulingStatus::WaitEvent
        })
    }
}
