//! Shard actors: each owns some slot groups, serialises the reservations, confirms and
//! releases of their orders, and sends what arrived while its last Redis call was in flight
//! as one batch (one script call), so a hot SKU costs one round trip per batch rather than
//! one per order. A batch holds requests of one kind, taken in arrival order. No timer: an
//! idle shard sends a lone request at once.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::engine::now_ms;
use crate::engine::stock_cache::StockCache;
use crate::metrics::Metrics;
use crate::store::redis::{RedisStore, RedisStoreError};
use crate::store::reservations::{
    ReserveOrder, ReserveParams, ReserveReply, TransitionOrder, TransitionReply,
};
use crate::store::wire::LevelsAfter;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("shard queue is full")]
    Overloaded,
    #[error("redis call timed out")]
    Timeout,
    /// An outage (connection refused, Redis loading its AOF, a failover): retry later.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("redis: {0}")]
    Store(String),
}

impl From<RedisStoreError> for ShardError {
    fn from(e: RedisStoreError) -> Self {
        match e {
            RedisStoreError::Timeout(_) => ShardError::Timeout,
            other if other.is_retryable() => ShardError::Unavailable(other.to_string()),
            other => ShardError::Store(other.to_string()),
        }
    }
}

/// What a caller asks of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardRequest {
    Reserve(ReserveOrder),
    Transition(TransitionOrder),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Reserve,
    Confirm,
    Release,
}

impl ShardRequest {
    fn kind(&self) -> BatchKind {
        match self {
            ShardRequest::Reserve(_) => BatchKind::Reserve,
            ShardRequest::Transition(t) if t.op.is_confirm() => BatchKind::Confirm,
            ShardRequest::Transition(_) => BatchKind::Release,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardReply {
    Reserve(ReserveReply),
    Transition(TransitionReply),
}

/// What a shard needs to decide a batch; no actor in it.
#[derive(Clone)]
pub struct ShardCore {
    pub redis: RedisStore,
    pub hold_ms: i64,
    pub max_journal_entries: u64,
    pub metrics: Metrics,
    /// Gets the counters each batch leaves, before its callers get their answers.
    pub cache: std::sync::Arc<StockCache>,
}

impl ShardCore {
    /// Runs one batch (requests of one kind) as one script call.
    pub async fn execute(&self, batch: &[ShardRequest]) -> Result<Vec<ShardReply>, ShardError> {
        let started = Instant::now();
        let (label, result) = match batch.first().map(ShardRequest::kind) {
            None => return Ok(vec![]),
            Some(BatchKind::Reserve) => {
                let orders: Vec<ReserveOrder> = batch
                    .iter()
                    .filter_map(|r| match r {
                        ShardRequest::Reserve(o) => Some(o.clone()),
                        ShardRequest::Transition(_) => None,
                    })
                    .collect();
                let params = ReserveParams {
                    now_ms: now_ms(),
                    hold_ms: self.hold_ms,
                    max_journal_entries: self.max_journal_entries,
                };
                self.metrics.reserve_batch_size.observe(orders.len() as f64);
                let replies = self.redis.reserve_batch(&orders, params).await;
                (
                    "reserve_batch",
                    replies.map(|(r, levels)| {
                        self.remember(&levels, started);
                        r.into_iter().map(ShardReply::Reserve).collect::<Vec<_>>()
                    }),
                )
            }
            Some(kind) => {
                let orders: Vec<TransitionOrder> = batch
                    .iter()
                    .filter_map(|r| match r {
                        ShardRequest::Transition(t) => Some(t.clone()),
                        ShardRequest::Reserve(_) => None,
                    })
                    .collect();
                let replies = self
                    .redis
                    .transition_batch(&orders, now_ms(), self.max_journal_entries)
                    .await;
                (
                    if kind == BatchKind::Confirm {
                        "confirm_batch"
                    } else {
                        "release_batch"
                    },
                    replies.map(|(r, levels)| {
                        self.remember(&levels, started);
                        r.into_iter()
                            .map(ShardReply::Transition)
                            .collect::<Vec<_>>()
                    }),
                )
            }
        };
        self.metrics
            .redis_call_latency
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        if let Err(RedisStoreError::BadReply { script, detail }) = &result {
            // A script and this code disagree: a bug, never an outcome to default away.
            tracing::error!(script, detail, "script reply does not fit the batch");
            self.metrics
                .internal_errors
                .with_label_values(&["script_reply"])
                .inc();
        }
        let replies = result?;
        // Redis applied the batch; a fault here is a reply lost on its way to the callers
        // (they hear "no answer in time" and may retry with the same orderNo).
        if crate::fault::point("script.after_reply").await.is_err() {
            return Err(ShardError::Timeout);
        }
        if replies.len() != batch.len() {
            return Err(ShardError::Store(format!(
                "{} replies for {} requests",
                replies.len(),
                batch.len()
            )));
        }
        Ok(replies)
    }
}

impl ShardCore {
    fn remember(&self, levels: &[LevelsAfter], sent_at: Instant) {
        self.cache.store_writes(levels, sent_at);
    }
}

pub type ShardResult = Result<ShardReply, ShardError>;

type Waiting = (ShardRequest, oneshot::Sender<ShardResult>);

/// The queue of one shard (plain struct, tested without actors).
pub struct ShardQueue {
    pending: VecDeque<Waiting>,
    capacity: usize,
    max_batch: usize,
    in_flight: usize,
    max_in_flight: usize,
    abandoned: u64,
}

impl ShardQueue {
    pub fn new(capacity: usize, max_batch: usize, max_in_flight: usize) -> Self {
        ShardQueue {
            pending: VecDeque::new(),
            capacity: capacity.max(1),
            max_batch: max_batch.max(1),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            abandoned: 0,
        }
    }

    /// Queues a request, or answers Overloaded at once when the queue is full.
    pub fn push(&mut self, request: ShardRequest, reply: oneshot::Sender<ShardResult>) {
        if self.pending.len() >= self.capacity {
            let _ = reply.send(Err(ShardError::Overloaded));
            return;
        }
        self.pending.push_back((request, reply));
    }

    /// The next batch, if fewer than `max_in_flight` are in flight: the longest run of
    /// requests of one kind at the head of the queue, up to `max_batch`. Batches of one
    /// shard go out on one connection, so Redis applies them in the order they were taken.
    /// A request whose caller gave up (timed out or disconnected) is dropped unsent: its
    /// answer would go nowhere, and under retry storms such requests would crowd out the
    /// live ones (a retry with the same orderNo is safe whatever happened).
    pub fn take_batch(&mut self) -> Option<Vec<Waiting>> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        self.drop_abandoned_head();
        let kind = self.pending.front()?.0.kind();
        let mut batch = Vec::new();
        while batch.len() < self.max_batch {
            self.drop_abandoned_head();
            match self.pending.front() {
                Some((request, _)) if request.kind() == kind => {
                    if let Some(item) = self.pending.pop_front() {
                        batch.push(item);
                    }
                }
                _ => break,
            }
        }
        self.in_flight += 1;
        Some(batch)
    }

    fn drop_abandoned_head(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|(_, reply)| reply.is_closed())
        {
            self.pending.pop_front();
            self.abandoned += 1;
        }
    }

    /// Requests dropped unsent because their callers had given up.
    pub fn abandoned(&self) -> u64 {
        self.abandoned
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
    replies: Vec<oneshot::Sender<ShardResult>>,
    result: Result<Vec<ShardReply>, ShardError>,
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

    fn send_batch(&mut self, batch: Vec<Waiting>, ctx: &mut Context<Self>) {
        let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let core = self.core.clone();
        ctx.spawn(
            async move { core.execute(&requests).await }
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
pub struct Submit {
    pub request: ShardRequest,
    pub reply: oneshot::Sender<ShardResult>,
}

impl Handler<Submit> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        self.queue.push(msg.request, msg.reply);
        self.pump(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SkuKey;
    use crate::domain::{SkuId, WarehouseId};
    use crate::store::reservations::OrderLine;

    fn order(n: usize) -> ShardRequest {
        ShardRequest::Reserve(ReserveOrder {
            order_no: format!("O{n}"),
            trace_id: String::new(),
            lines: vec![OrderLine {
                key: SkuKey::new(WarehouseId(1), SkuId(1)),
                qty: 1,
            }],
        })
    }

    fn confirm(n: usize) -> ShardRequest {
        ShardRequest::Transition(TransitionOrder {
            order_no: format!("O{n}"),
            trace_id: String::new(),
            positions: vec![SkuKey::new(WarehouseId(1), SkuId(1))],
            op: crate::store::reservations::TransitionOp::Confirm {
                even_if_expired: false,
            },
        })
    }

    #[test]
    fn requests_whose_callers_gave_up_are_not_sent() {
        let mut queue = ShardQueue::new(10, 10, 4);
        let (tx0, rx0) = oneshot::channel();
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        queue.push(order(0), tx0);
        queue.push(order(1), tx1);
        queue.push(order(2), tx2);
        drop(rx0);
        drop(rx2);
        let batch = queue.take_batch().unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].0, order(1));
        assert_eq!(queue.abandoned(), 2);
        assert!(queue.is_empty());
        drop(rx1);
    }

    #[test]
    fn a_batch_holds_one_kind_in_arrival_order() {
        let mut queue = ShardQueue::new(10, 10, 4);
        let mut receivers = Vec::new();
        for request in [order(0), order(1), confirm(0), confirm(1), order(2)] {
            let (tx, rx) = oneshot::channel();
            queue.push(request, tx);
            receivers.push(rx);
        }
        let sizes: Vec<usize> =
            std::iter::from_fn(|| queue.take_batch().map(|b| b.len())).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
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
        assert_eq!(second[0].0, order(3));
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
