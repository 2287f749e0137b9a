//! [`Message`]: data travelling between operators of one process, with the stream that orders it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::ipc::InterprocessEvent;
use crate::pool::{Stream, next_id};

/// A process-unique id of a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// A payload plus what orders the GPU work that produced it: at most one stream (Holoscan's
/// `CudaStreamId` component) and any number of interprocess events (data that came from another
/// process). A message without either is ready as soon as it is received.
pub struct Message<T> {
    id: MessageId,
    payload: T,
    stream: Option<Stream>,
    events: Vec<Arc<InterprocessEvent>>,
}

impl<T: fmt::Debug> fmt::Debug for Message<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("payload", &self.payload)
            .field("stream", &self.stream)
            .field("events", &self.events.len())
            .finish()
    }
}

impl<T> Message<T> {
    /// A message without a stream.
    pub fn new(payload: T) -> Message<T> {
        Message {
            id: MessageId(next_id()),
            payload,
            stream: None,
            events: Vec::new(),
        }
    }
    /// Attaches (or replaces) the stream that orders the payload's GPU work.
    pub fn with_stream(mut self, stream: Option<Stream>) -> Message<T> {
        self.stream = stream;
        self
    }
    /// Adds an interprocess event the consumer's stream must wait on before using the payload.
    pub fn with_event(mut self, event: Arc<InterprocessEvent>) -> Message<T> {
        self.events.push(event);
        self
    }
    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.id
    }
    /// The attached stream, if any.
    pub fn stream(&self) -> Option<&Stream> {
        self.stream.as_ref()
    }
    /// The attached interprocess events.
    pub fn events(&self) -> &[Arc<InterprocessEvent>] {
        &self.events
    }
    /// The payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }
    /// Splits the message into payload, stream and events.
    pub fn into_parts(self) -> (T, Option<Stream>, Vec<Arc<InterprocessEvent>>) {
        (self.payload, self.stream, self.events)
    }
}

/// What a [`StreamCondition`](crate::StreamCondition) needs to see of a queued message.
#[derive(Clone)]
pub(crate) struct Pending {
    pub(crate) id: MessageId,
    pub(crate) stream: Option<Stream>,
    pub(crate) events: Vec<Arc<InterprocessEvent>>,
}

/// A queue of messages in front of an input port (a GXF receiver). Shared between the producer
/// (push), the condition (peek) and the operator (pop); safe across threads.
pub struct MessageQueue<T> {
    name: String,
    queue: Mutex<VecDeque<Message<T>>>,
}

impl<T> fmt::Debug for MessageQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageQueue")
            .field("name", &self.name)
            .field("len", &self.len())
            .finish()
    }
}

impl<T> MessageQueue<T> {
    /// An empty queue for the input port `name` (e.g. `"in"` or `"in:1"`).
    pub fn new(name: impl Into<String>) -> Arc<MessageQueue<T>> {
        Arc::new(MessageQueue {
            name: name.into(),
            queue: Mutex::new(VecDeque::new()),
        })
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message<T>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The port name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Appends a message.
    pub fn push(&self, message: Message<T>) {
        self.lock().push_back(message);
    }
    /// Takes the oldest message.
    pub fn pop(&self) -> Option<Message<T>> {
        self.lock().pop_front()
    }
    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Type-erased view of a queue for the condition.
pub(crate) trait PendingSource: Send + Sync {
    fn pending(&self, first_only: bool) -> Vec<Pending>;
}

impl<T: Send> PendingSource for MessageQueue<T> {
    fn pending(&self, first_only: bool) -> Vec<Pending> {
        let q = self.lock();
        let n = if first_only { q.len().min(1) } else { q.len() };
        q.iter()
            .take(n)
            .map(|m| Pending {
                id: m.id,
                stream: m.stream.clone(),
                events: m.events.clone(),
            })
            .collect()
    }
}
