//! Shard actors: each serialises the reservations of its SKUs and sends what arrived while
//! its last Redis call was in flight as one batch (one script call), so a hot SKU costs one
//! round trip per batch rather than one per order. No timer: an idle shard sends a lone
//! request at once.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::engine::now_ms;
use crate::metrics::Metrics;
use crate::store::redis::{RedisStore, RedisStoreError};
use crate::store::reservations::{ReserveOrder, ReserveParams, ReserveReply};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("shard queue is full")]
    Overloaded,
    #[error("redis call timed out")]
    Timeout,
    #[error("redis: {0}")]
    Store(String),
}

impl From<RedisStoreError> for ShardError {
    fn from(e: RedisStoreError) -> Self {
        match e {
            RedisStoreError::Timeout(_) => ShardError::Timeout,
            other => ShardError::Store(other.to_string()),
        }
    }
}

/// What a shard needs to decide a batch; no actor in it.
#[derive(Clone)]
pub struct ShardCore {
    pub redis: RedisStore,
    pub hold_ms: i64,
    pub marker_ttl_ms: i64,
    pub max_journal_entries: u64,
    pub metrics: Metrics,
}

impl ShardCore {
    pub async fn execute(&self, orders: &[ReserveOrder]) -> Result<Vec<ReserveReply>, ShardError> {
        let params = ReserveParams {
            now_ms: now_ms(),
            hold_ms: self.hold_ms,
            marker_ttl_ms: self.marker_ttl_ms,
            max_journal_entries: self.max_journal_entries,
        };
        let started = Instant::now();
        let result = self.redis.reserve_batch(orders, params).await;
        self.metrics
            .redis_call_latency
            .with_label_values(&["reserve_batch"])
            .observe(started.elapsed().as_secs_f64());
        self.metrics.reserve_batch_size.observe(orders.len() as f64);
        Ok(result?)
    }
}

pub type ReserveResult = Result<ReserveReply, ShardError>;

/// The queue of one shard (plain struct, tested without actors).
pub struct ShardQueue {
    pending: VecDeque<(ReserveOrder, oneshot::Sender<ReserveResult>)>,
    capacity: usize,
    max_batch: usize,
    in_flight: usize,
    max_in_flight: usize,
}

impl ShardQueue {
    pub fn new(capacity: usize, max_batch: usize, max_in_flight: usize) -> Self {
        ShardQueue {
            pending: VecDeque::new(),
            capacity: capacity.max(1),
            max_batch: max_batch.max(1),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Queues an order, or answers Overloaded at once when the queue is full.
    pub fn push(&mut self, order: ReserveOrder, reply: oneshot::Sender<ReserveResult>) {
        if self.pending.len() >= self.capacity {
            let _ = reply.send(Err(ShardError::Overloaded));
            return;
        }
        self.pending.push_back((order, reply));
    }

    /// The next batch, if fewer than `max_in_flight` are in flight. Batches of one shard
    /// go out on one connection, so Redis applies them in the order they were taken.
    pub fn take_batch(&mut self) -> Option<Vec<(ReserveOrder, oneshot::Sender<ReserveResult>)>> {
        if self.in_flight >= self.max_in_flight || self.pending.is_empty() {
            return None;
        }
        let n = self.pending.len().min(self.max_batch);
        self.in_flight += 1;
        Some(self.pending.drain(..n).collect())
    }

    pub fn finish_batch(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Answers a batch's callers in order.
pub fn deliver(
    replies: Vec<oneshot::Sender<ReserveResult>>,
    result: Result<Vec<ReserveReply>, ShardError>,
) {
    match result {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

pub struct ShardActor {
    core: Rc<ShardCore>,
    queue: ShardQueue,
}

impl ShardActor {
    pub fn new(core: ShardCore, capacity: usize, max_batch: usize, max_in_flight: usize) -> Self {
        ShardActor {
            core: Rc::new(core),
            queue: ShardQueue::new(capacity, max_batch, max_in_flight),
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        while let Some(batch) = self.queue.take_batch() {
            self.send_batch(batch, ctx);
        }
    }

    fn send_batch(
        &mut self,
        batch: Vec<(ReserveOrder, oneshot::Sender<ReserveResult>)>,
        ctx: &mut Context<Self>,
    ) {
        let (orders, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let core = self.core.clone();
        ctx.spawn(
            async move { core.execute(&orders).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    deliver(replies, result);
                    act.queue.finish_batch();
                    act.pump(ctx);
                }),
        );
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Reserve {
    pub order: ReserveOrder,
    pub reply: oneshot::Sender<ReserveResult>,
}

impl Handler<Reserve> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: Reserve, ctx: &mut Self::Context) {
        self.queue.push(msg.order, msg.reply);
        self.pump(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SkuKey;
    use crate::store::reservations::OrderLine;

    fn order(n: usize) -> ReserveOrder {
        ReserveOrder {
            order_no: format!("O{n}"),
            trace_id: String::new(),
            lines: vec![OrderLine {
                key: SkuKey::new(1, 1),
                qty: 1,
            }],
        }
    }

    #[test]
    fn batches_are_bounded_and_one_at_a_time() {
        let mut queue = ShardQueue::new(10, 3, 1);
        let mut receivers = Vec::new();
        for n in 0..5 {
            let (tx, rx) = oneshot::channel();
            queue.push(order(n), tx);
            receivers.push(rx);
        }
        let first = queue.take_batch().unwrap();
        assert_eq!(first.len(), 3);
        assert!(
            queue.take_batch().is_none(),
            "one batch in flight at a time"
        );
        queue.finish_batch();
        let second = queue.take_batch().unwrap();
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].0.order_no, "O3");
    }

    #[test]
    fn a_full_queue_answers_overloaded_at_once() {
        let mut queue = ShardQueue::new(2, 10, 1);
        let mut receivers = Vec::new();
        for n in 0..3 {
            let (tx, rx) = oneshot::channel();
            queue.push(order(n), tx);
            receivers.push(rx);
        }
        assert_eq!(queue.len(), 2);
        let mut third = receivers.pop().unwrap();
        assert!(matches!(third.try_recv(), Ok(Err(ShardError::Overloaded))));
    }

    #[test]
    fn a_failed_batch_fails_every_caller() {
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        deliver(vec![tx1, tx2], Err(ShardError::Timeout));
        assert!(matches!(rx1.try_recv(), Ok(Err(ShardError::Timeout))));
        assert!(matches!(rx2.try_recv(), Ok(Err(ShardError::Timeout))));
    }
}
