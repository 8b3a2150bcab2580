//! [`MemoryBroker`]: an in-process broker for the single-binary quick start.
//!
//! It keeps every partition as an in-memory log with JetStream-like semantics: positions
//! start at 1 and grow by one per stored message, and a message id already stored is
//! acknowledged as a duplicate without storing it again.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard,
    },
};

use bytes::Bytes;
use futures::future::{self, BoxFuture, FutureExt};

use crate::publisher::{OutboundMessage, Position, PublishError, Publisher};

/// A message stored by [`MemoryBroker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in its partition, from 1.
    pub offset: u64,
    /// The publisher's message id.
    pub id: String,
    /// The payload as published.
    pub payload: Bytes,
}

#[derive(Debug, Default)]
struct Partition {
    log: Vec<StoredMessage>,
    ids: HashSet<String>,
}

/// An in-process, partitioned, deduplicating message log.
#[derive(Debug)]
pub struct MemoryBroker {
    partitions: Vec<Mutex<Partition>>,
    available: AtomicBool,
}

impl MemoryBroker {
    /// A broker with `partitions` empty partitions (at least one).
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions: (0..partitions.max(1)).map(|_| Mutex::new(Partition::default())).collect(),
            available: AtomicBool::new(true),
        }
    }

    /// Messages stored in `partition`, oldest first.
    pub fn messages(&self, partition: u32) -> Vec<StoredMessage> {
        self.partitions.get(partition as usize).map(|p| lock(p).log.clone()).unwrap_or_default()
    }

    /// Makes the broker refuse (`false`) or accept (`true`) publishes, to exercise
    /// failure handling in callers.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }
}

fn lock(partition: &Mutex<Partition>) -> MutexGuard<'_, Partition> {
    // A panic while holding the lock cannot leave the log half-written (push and insert
    // are the only mutations), so a poisoned lock is still safe to use.
    partition.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Publisher for MemoryBroker {
    fn partitions(&self) -> u32 {
        // The constructor makes at most u32::MAX partitions.
        self.partitions.len() as u32
    }

    fn is_ready(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    fn publish(&self, message: OutboundMessage) -> BoxFuture<'static, Result<Position, PublishError>> {
        let result = if !self.is_ready() {
            Err(PublishError::NotConnected("in-process broker marked unavailable".to_owned()))
        } else if let Some(partition) = self.partitions.get(message.partition as usize) {
            let mut partition = lock(partition);
            if partition.ids.contains(&message.id) {
                let offset = partition.log.iter().rev().find(|m| m.id == message.id).map_or(0, |m| m.offset);
                Ok(Position { partition: message.partition, offset, duplicate: true })
            } else {
                let offset = partition.log.len() as u64 + 1;
                partition.ids.insert(message.id.clone());
                partition.log.push(StoredMessage { offset, id: message.id, payload: message.payload });
                Ok(Position { partition: message.partition, offset, duplicate: false })
            }
        } else {
            Err(PublishError::NoSuchPartition { partition: message.partition, partitions: self.partitions() })
        };
        future::ready(result).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: u32, id: &str) -> OutboundMessage {
        OutboundMessage { partition, id: id.into(), payload: Bytes::from_static(b"x\n"), events: 1 }
    }

    #[tokio::test]
    async fn stores_in_order_and_deduplicates() {
        let broker = MemoryBroker::new(2);
        assert_eq!(broker.publish(msg(1, "a")).await.map(|p| p.offset).ok(), Some(1));
        assert_eq!(broker.publish(msg(1, "b")).await.map(|p| p.offset).ok(), Some(2));
        let again = broker.publish(msg(1, "a")).await.expect("duplicate is acknowledged");
        assert_eq!((again.offset, again.duplicate), (1, true));
        assert_eq!(broker.messages(1).len(), 2);
        assert!(broker.messages(0).is_empty());
    }

    #[tokio::test]
    async fn refuses_bad_partition_and_when_unavailable() {
        let broker = MemoryBroker::new(2);
        assert!(matches!(broker.publish(msg(2, "a")).await, Err(PublishError::NoSuchPartition { .. })));
        broker.set_available(false);
        assert!(!broker.is_ready());
        assert!(matches!(broker.publish(msg(0, "a")).await, Err(PublishError::NotConnected(_))));
        assert!(broker.messages(0).is_empty());
    }
}
