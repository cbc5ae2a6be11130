//! The supervisor: expiry of stale holds, Redis-vs-DB reconciliation, and the rebuild of a
//! Redis that lost its data. With several instances only the holder of a Redis lease runs
//! the periodic jobs; every action is decided in a script, so even two jobs racing apply
//! each change once.

use std::collections::HashMap;

use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::Settings;
use crate::engine::leadership::{Leadership, LeaseGuard};
use crate::engine::reconcile::Reconciler;
use crate::engine::reservation::ReservationEngine;
use crate::engine::stock::StockService;
use crate::engine::{now_ms, EngineError};
use crate::metrics::Metrics;
use crate::store::cluster::ResolveReport;
use crate::store::redis::RedisStore;
use crate::store::supervision::{ExpireCall, ExpireReply, EXPIRE_CALL_MAX};

/// Expire calls (one group each) a run keeps in flight: one runs in Redis while the next
/// is on its way, and live requests still get between them.
const EXPIRE_CALLS_IN_FLIGHT: usize = 2;

// ---------------------------------------------------------------- expiry

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExpiryReport {
    /// Orders whose holds were released now.
    pub released: usize,
    /// Of those, the orders released in their group by lua/expire.lua (the rest went
    /// through the general path: lines in several groups, or an order-status hook).
    pub released_in_groups: usize,
    /// Orders the order service said were paid: confirmed instead.
    pub confirmed: usize,
    /// Orders kept because the order service could not be asked (retried later).
    pub kept: usize,
    /// Orders already settled by someone else (another job, a confirm, a cancel).
    pub settled: usize,
    /// Steps taken: one expire.lua call in one group that found holds due, or one
    /// directory read and one round of shard batches on the general path.
    pub steps: usize,
    /// The run ended on its time budget with holds still due: run again soon.
    pub budget_spent: bool,
    /// The run stopped because this instance no longer holds the supervisor lease.
    pub lease_lost: bool,
}

/// Releases expired holds (the reference's timeout job), asking the order service first
/// when configured. A run drains what is due: steps of `batch_size` orders, oldest first,
/// until nothing is due or `run_budget_ms` is spent.
#[derive(Clone)]
pub struct ExpiryJob {
    reservations: ReservationEngine,
    stock: StockService,
    settings: Settings,
    metrics: Metrics,
    http: reqwest::Client,
    /// Orders whose status could not be read, and how often. Bounded: a run that drains
    /// everything keeps only the orders it kept.
    attempts: Arc<Mutex<HashMap<String, u32>>>,
}

enum PaidAnswer {
    Paid,
    NotPaid,
    Unknown(String),
}

/// What one step decided for each order it read.
#[derive(Default)]
struct StepPlan {
    release: Vec<String>,
    confirm: Vec<String>,
    keep: Vec<String>,
}

impl ExpiryJob {
    pub fn new(
        reservations: ReservationEngine,
        stock: StockService,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(
                settings.reservation.timeout.order_status_timeout_ms,
            ))
            .build()
            .unwrap_or_default();
        ExpiryJob {
            reservations,
            stock,
            settings,
            metrics,
            http,
            attempts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    async fn order_paid(&self, order_no: &str) -> PaidAnswer {
        let url = self
            .settings
            .reservation
            .timeout
            .order_status_url
            .replace("{orderNo}", order_no);
        let response = match self.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return PaidAnswer::Unknown(format!("order service answered {}", r.status())),
            Err(e) => return PaidAnswer::Unknown(e.to_string()),
        };
        let body: serde_json::Value = match response.json().await {
            Ok(body) => body,
            Err(e) => return PaidAnswer::Unknown(e.to_string()),
        };
        fn status_of(v: &serde_json::Value) -> Option<&str> {
            v.get("status").and_then(|s| s.as_str())
        }
        let status = body
            .get("data")
            .and_then(status_of)
            .or_else(|| status_of(&body))
            .unwrap_or("");
        if status.eq_ignore_ascii_case("PAID") {
            PaidAnswer::Paid
        } else if status.is_empty() {
            PaidAnswer::Unknown(format!("no status in {body}"))
        } else {
            PaidAnswer::NotPaid
        }
    }

    /// The longest a run may take: the configured budget, capped at half the lease (the
    /// lease is renewed on its own timer, and a run that loses it stops between steps; the
    /// cap keeps a run short enough that holds due meanwhile wait at most that long).
    fn budget(&self) -> Duration {
        let budget_ms = self
            .settings
            .reservation
            .timeout
            .run_budget_ms
            .min(self.settings.supervisor.lease_ms / 2)
            .max(1);
        Duration::from_millis(budget_ms)
    }

    /// One run: every due hold, in steps of `batch_size`, within the time budget.
    ///
    /// Each round reads up to `batch_size` due holds from every group (one pipeline) and
    /// works through all it read, `batch_size` orders per step, oldest first. Everything a
    /// step handles leaves the holds index except the orders kept (order status unknown),
    /// so the next round reads each group from the expiry of the last order it took there
    /// and skips only those.
    pub async fn run_once(&self) -> Result<ExpiryReport, EngineError> {
        self.run(None).await
    }

    /// A run of the leader: it stops between steps once the lease it started under is
    /// lost (another instance may be running the job by then).
    pub async fn run_as_leader(&self, guard: &LeaseGuard) -> Result<ExpiryReport, EngineError> {
        self.run(Some(guard)).await
    }

    async fn run(&self, guard: Option<&LeaseGuard>) -> Result<ExpiryReport, EngineError> {
        let started = Instant::now();
        let trace = format!("expiry-{}", uuid::Uuid::new_v4().simple());
        let mut report = ExpiryReport::default();
        // Orders left held this run (order status unknown): skipped when read again.
        let mut kept: std::collections::HashSet<String> = std::collections::HashSet::new();
        if self.per_group_applies() {
            self.run_per_group(guard, started, &trace, &mut report)
                .await?;
            return Ok(report);
        }
        self.run_general(guard, started, &trace, &mut report, &mut kept)
            .await?;
        if !report.budget_spent && !report.lease_lost {
            // Orders that were not seen again were settled elsewhere: forget their counts.
            self.attempts
                .lock()
                .await
                .retain(|order, _| kept.contains(order));
        }
        Ok(report)
    }

    /// Whether a run can release in the groups themselves (lua/expire.lua): on a single
    /// Redis, with no order service to ask first.
    fn per_group_applies(&self) -> bool {
        self.settings
            .reservation
            .timeout
            .order_status_url
            .is_empty()
            && !self.stock.redis().is_cluster()
    }

    /// Releases what is due group by group, one lua/expire.lua call per group and step
    /// (at most `batch_size` orders, two calls in flight), until no group has anything due
    /// or the budget is spent. The orders a call passes over (lines in several groups, or
    /// a state only the general path decides) go through the general path's release
    /// (directory, shards, lua/release.lua) before that group's next call, once per run.
    /// A group whose journal is full is left until the next run; the others go on, and
    /// the run then fails with `JournalFull`.
    async fn run_per_group(
        &self,
        guard: Option<&LeaseGuard>,
        started: Instant,
        trace: &str,
        report: &mut ExpiryReport,
    ) -> Result<(), EngineError> {
        let redis = self.stock.redis();
        let budget = self.budget();
        let batch = self
            .settings
            .reservation
            .timeout
            .batch_size
            .clamp(1, EXPIRE_CALL_MAX);
        let fence = guard.map_or(0, |g| g.token);
        let max_journal_entries = self.settings.journal.max_pending_entries;
        let groups = redis.keys().groups();
        // Per group: due orders at the head of its range that stay held this run (the
        // general path could not settle them); its next call skips them. Every order a
        // call reads either leaves the index or adds one here, so a run always advances.
        let mut offsets: HashMap<u32, usize> = HashMap::new();
        // Each passed-over order goes to the general path once per run (a multi-group
        // order is passed over by each of its groups).
        let mut handed_over: std::collections::HashSet<String> = std::collections::HashSet::new();
        // Of those, the ones it could not settle (they stay in the index).
        let mut left_held: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut queue: std::collections::VecDeque<u32> = (0..groups).collect();
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut failure: Option<EngineError> = None;
        let mut journal_full = false;
        loop {
            while in_flight.len() < EXPIRE_CALLS_IN_FLIGHT
                && failure.is_none()
                && !report.budget_spent
                && !report.lease_lost
            {
                let Some(group) = queue.pop_front() else {
                    break;
                };
                if report.steps > 0 && started.elapsed() >= budget {
                    report.budget_spent = true;
                    break;
                }
                if guard.is_some_and(|g| !g.holds()) {
                    report.lease_lost = true;
                    break;
                }
                // Due holds are about to be released: a crash or pause here must leave
                // them to the next run (or the next leader), released once.
                if let Err(e) = crate::fault::point("expiry.before_release").await {
                    failure = Some(e.into());
                    break;
                }
                let call = ExpireCall {
                    now_ms: now_ms(),
                    max_journal_entries,
                    limit: batch,
                    offset: offsets.get(&group).copied().unwrap_or(0),
                    fence,
                    trace_id: trace,
                };
                in_flight.push(async move {
                    let sent_at = Instant::now();
                    (group, sent_at, redis.expire_group(group, &call).await)
                });
            }
            let Some((group, sent_at, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(ExpireReply::Expired {
                    released,
                    passed_over,
                    read,
                    forgotten,
                    levels,
                }) => {
                    self.stock.cache().store_writes(&levels, sent_at);
                    if read > 0 {
                        report.steps += 1;
                    }
                    report.released += released;
                    report.released_in_groups += released;
                    report.settled += forgotten;
                    self.count_many("released", released);
                    let transitions = &self.metrics.transitions;
                    transitions
                        .with_label_values(&["expire", "done"])
                        .inc_by(released as u64);
                    transitions
                        .with_label_values(&["expire", "exists"])
                        .inc_by(forgotten as u64);
                    // Passed over again though handed over before (by this group or
                    // another of the order's groups): still in this group's index only if
                    // the general path left it there; otherwise it has gone meanwhile.
                    let mut still_held = 0;
                    let mut fresh = Vec::new();
                    for order in passed_over {
                        if handed_over.insert(order.clone()) {
                            fresh.push(order);
                        } else if left_held.contains(&order) {
                            still_held += 1;
                        }
                    }
                    if !fresh.is_empty() && failure.is_none() && !report.lease_lost {
                        report.steps += 1;
                        let plan = StepPlan {
                            release: fresh,
                            ..StepPlan::default()
                        };
                        match self.apply_step(plan, trace, fence, report).await {
                            Ok(left) => {
                                still_held += left.len();
                                left_held.extend(left);
                            }
                            Err(e) => {
                                failure.get_or_insert(e);
                            }
                        }
                    }
                    if still_held > 0 {
                        *offsets.entry(group).or_insert(0) += still_held;
                    }
                    if read >= batch {
                        queue.push_back(group);
                    }
                }
                // A newer leader raised the fence: the holds are its to release now.
                Ok(ExpireReply::Fenced) => {
                    report.lease_lost = true;
                    self.count("fenced");
                }
                // Not called again this run; the other groups go on.
                Ok(ExpireReply::JournalFull) => journal_full = true,
                Err(e) => {
                    failure.get_or_insert(e.into());
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None if journal_full => Err(EngineError::JournalFull),
            None => Ok(()),
        }
    }

    /// The general path: reads the due holds of every group, asks the order service when
    /// configured, and confirms or releases through the shards in steps of `batch_size`.
    async fn run_general(
        &self,
        guard: Option<&LeaseGuard>,
        started: Instant,
        trace: &str,
        report: &mut ExpiryReport,
        kept: &mut std::collections::HashSet<String>,
    ) -> Result<(), EngineError> {
        let budget = self.budget();
        let batch = self.settings.reservation.timeout.batch_size.max(1);
        let mut from_ms = vec![i64::MIN; self.stock.redis().keys().groups() as usize];
        'rounds: loop {
            if started.elapsed() >= budget {
                report.budget_spent = true;
                break;
            }
            if guard.is_some_and(|g| !g.holds()) {
                report.lease_lost = true;
                break;
            }
            let per_group = self
                .stock
                .redis()
                .due_holds(&from_ms, now_ms(), batch + kept.len())
                .await?;
            let mut round: Vec<(String, i64)> = Vec::new();
            let mut listed = std::collections::HashSet::new();
            for (g, entries) in per_group.into_iter().enumerate() {
                let taken = entries
                    .into_iter()
                    .filter(|(order, _)| !kept.contains(order))
                    .take(batch);
                for (order, expire_at) in taken {
                    if let Some(from) = from_ms.get_mut(g) {
                        *from = expire_at;
                    }
                    // A multi-group order is listed by each of its groups.
                    if listed.insert(order.clone()) {
                        round.push((order, expire_at));
                    }
                }
            }
            if round.is_empty() {
                break;
            }
            round.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
            for step in round.chunks(batch) {
                if report.steps > 0 && started.elapsed() >= budget {
                    report.budget_spent = true;
                    break 'rounds;
                }
                if guard.is_some_and(|g| !g.holds()) {
                    report.lease_lost = true;
                    break 'rounds;
                }
                report.steps += 1;
                let plan = self.plan_step(step).await;
                kept.extend(plan.keep.iter().cloned());
                report.kept += plan.keep.len();
                let fence = guard.map_or(0, |g| g.token);
                let left = self.apply_step(plan, trace, fence, report).await?;
                kept.extend(left);
                if report.lease_lost {
                    break 'rounds;
                }
            }
        }
        Ok(())
    }

    /// Asks the order service about every order of a step (bounded concurrency) and
    /// decides what to do with each. Without the hook, everything is released.
    async fn plan_step(&self, step: &[(String, i64)]) -> StepPlan {
        let timeout = &self.settings.reservation.timeout;
        if timeout.order_status_url.is_empty() {
            return StepPlan {
                release: step.iter().map(|(o, _)| o.clone()).collect(),
                ..StepPlan::default()
            };
        }
        let answers: Vec<(String, PaidAnswer)> = futures_util::stream::iter(step.iter())
            .map(|(order, _)| async move { (order.clone(), self.order_paid(order).await) })
            .buffered(timeout.order_status_concurrency.max(1))
            .collect()
            .await;
        let mut plan = StepPlan::default();
        let mut attempts = self.attempts.lock().await;
        for (order_no, answer) in answers {
            match answer {
                PaidAnswer::Paid => {
                    attempts.remove(&order_no);
                    plan.confirm.push(order_no);
                }
                PaidAnswer::NotPaid => {
                    attempts.remove(&order_no);
                    plan.release.push(order_no);
                }
                PaidAnswer::Unknown(reason) => {
                    let n = attempts.entry(order_no.clone()).or_insert(0);
                    *n += 1;
                    if *n < timeout.order_status_max_attempts {
                        tracing::warn!(
                            order_no,
                            attempt = *n,
                            reason,
                            "order status unknown; hold kept"
                        );
                        self.count("kept");
                        plan.keep.push(order_no);
                    } else {
                        tracing::error!(
                            order_no,
                            attempts = *n,
                            reason,
                            "order status still unknown; releasing the expired hold"
                        );
                        attempts.remove(&order_no);
                        plan.release.push(order_no);
                    }
                }
            }
        }
        plan
    }

    /// Confirms the paid orders and releases the rest of a step, all at once through the
    /// shards. Orders that turn out settled elsewhere leave the holds index.
    /// Returns the orders left in place because an unexpected error stopped them (the
    /// next run tries them again; this one skips them).
    async fn apply_step(
        &self,
        plan: StepPlan,
        trace: &str,
        fence: i64,
        report: &mut ExpiryReport,
    ) -> Result<Vec<String>, EngineError> {
        let mut forget = Vec::new();
        let mut left = Vec::new();
        let mut transient = None;
        let confirms = plan
            .confirm
            .iter()
            .map(|order_no| self.reservations.confirm_paid(order_no, trace));
        let confirmed = futures_util::future::join_all(confirms).await;
        for (order_no, result) in plan.confirm.iter().zip(confirmed) {
            match result {
                Ok(_) => {
                    report.confirmed += 1;
                    self.count("confirmed_paid");
                }
                Err(e) if e.is_retryable() => transient = Some(e),
                Err(e) if settled_elsewhere(&e) => {
                    tracing::warn!(order_no, error = %e, "paid order could not be confirmed");
                    forget.push(order_no.clone());
                    report.settled += 1;
                }
                Err(e) => {
                    tracing::error!(order_no, error = %e, "paid order could not be confirmed; hold kept");
                    left.push(order_no.clone());
                }
            }
        }
        // Read and decided, not released: the next run (or another leader) must release
        // each hold once.
        crate::fault::point("expiry.before_release").await?;
        let released = self
            .reservations
            .release_expired_many(&plan.release, trace, fence)
            .await?;
        for (order_no, result) in plan.release.iter().zip(released) {
            match result {
                Ok(outcome) if !outcome.existed => {
                    report.released += 1;
                    self.count("released");
                }
                Ok(_) => {
                    forget.push(order_no.clone());
                    report.settled += 1;
                }
                Err(e) if e.is_retryable() => transient = Some(e),
                // A newer leader raised the fence: the hold is its to release now.
                Err(EngineError::Fenced) => {
                    report.lease_lost = true;
                    self.count("fenced");
                    left.push(order_no.clone());
                }
                // Confirmed, not found, or not (yet) expired: not ours to release.
                Err(e) if settled_elsewhere(&e) => {
                    tracing::debug!(order_no, error = %e, "expired hold already settled");
                    forget.push(order_no.clone());
                    report.settled += 1;
                }
                // Anything else is unexpected: the hold must not leave the index (it
                // would never expire); the next run tries it again.
                Err(e) => {
                    tracing::error!(order_no, error = %e, "expired hold not released; kept for the next run");
                    left.push(order_no.clone());
                }
            }
        }
        self.stock.redis().forget_holds(&forget).await?;
        match transient {
            Some(e) => Err(e),
            None => Ok(left),
        }
    }

    /// Holds due now and not yet released: how many, and how long the oldest has been due.
    pub async fn lag(&self) -> Result<ExpiryLag, EngineError> {
        let now = now_ms();
        let (due, oldest) = self.stock.redis().due_hold_stats(now).await?;
        let lag = ExpiryLag {
            due_holds: due,
            oldest_due_age_ms: oldest
                .map(|x| u64::try_from(now - x).unwrap_or(0))
                .unwrap_or(0),
        };
        self.metrics
            .expiry_due_holds
            .set(i64::try_from(lag.due_holds).unwrap_or(i64::MAX));
        self.metrics
            .expiry_oldest_due_age
            .set(lag.oldest_due_age_ms as f64 / 1000.0);
        Ok(lag)
    }

    fn count_many(&self, outcome: &str, n: usize) {
        self.metrics
            .holds_expired
            .with_label_values(&[outcome])
            .inc_by(n as u64);
    }

    fn count(&self, outcome: &str) {
        self.count_many(outcome, 1);
    }
}

/// Errors that say the order is not (or no longer) ours to release or confirm: it was
/// settled by someone else, is unknown, or has not expired. Only these let an order leave
/// the holds index without being released.
fn settled_elsewhere(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::ReservationNotFound(_) | EngineError::InvalidStatus(_)
    )
}

/// How far expiry is behind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpiryLag {
    /// Holds past their expiry that are still held (the scan has not released them yet).
    pub due_holds: u64,
    /// How long the oldest of them has been due, in milliseconds (0 when none is).
    pub oldest_due_age_ms: u64,
}

// ---------------------------------------------------------------- the actor

/// The supervisor's state between ticks (plain struct; the actor only forwards).
/// Forgets orders whose holds and markers have lived out, a chunk of the directory at a
/// time; where it stopped is kept for the next run.
#[derive(Clone)]
pub struct SweepJob {
    stock: StockService,
    settings: Settings,
    metrics: Metrics,
    cursor: std::sync::Arc<tokio::sync::Mutex<u64>>,
    last_resolve: std::sync::Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl SweepJob {
    pub fn new(stock: StockService, settings: Settings, metrics: Metrics) -> Self {
        SweepJob {
            stock,
            settings,
            metrics,
            cursor: Default::default(),
            last_resolve: Default::default(),
        }
    }

    /// Sweeps until the directory was scanned to its end or 2 s are spent. Returns how
    /// many orders were forgotten.
    pub async fn run_once(&self, guard: Option<&LeaseGuard>) -> Result<u64, EngineError> {
        let mut cursor = self.cursor.lock().await;
        let budget = Instant::now() + Duration::from_secs(2);
        let mut removed = 0;
        loop {
            if guard.is_some_and(|g| !g.holds()) {
                break;
            }
            let (next, n) = self
                .stock
                .redis()
                .sweep_orders(
                    *cursor,
                    self.settings.supervisor.sweep_chunk,
                    now_ms(),
                    self.settings.marker_ttl_ms(),
                )
                .await?;
            removed += n;
            *cursor = next;
            if next == 0 || Instant::now() >= budget {
                break;
            }
        }
        self.metrics.orders_swept.inc_by(removed);
        Ok(removed)
    }

    /// Cluster mode: resolves orders left PENDING past their deadline and completes
    /// confirm / release decisions not applied everywhere (a crash between the steps of
    /// an order spanning slot groups). At most once a second; nothing on a single Redis.
    pub async fn resolve_once(&self) -> Result<ResolveReport, EngineError> {
        let redis = self.stock.redis();
        if !redis.is_cluster() {
            return Ok(ResolveReport::default());
        }
        {
            let mut last = self.last_resolve.lock().await;
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Ok(ResolveReport::default());
            }
            *last = Some(Instant::now());
        }
        Ok(redis.resolve_in_doubt(now_ms(), 1000).await?)
    }
}

pub struct SupervisorCore {
    pub instance_id: String,
    pub expiry: ExpiryJob,
    pub reconciler: Reconciler,
    pub sweep: SweepJob,
    pub settings: Settings,
    pub metrics: Metrics,
    next_expiry: Option<Instant>,
    next_reconcile: Option<Instant>,
    next_sweep: Option<Instant>,
    /// The lease as of its last renewal; the jobs check it between their batches.
    pub leadership: Leadership,
    /// The token last logged (leadership changes are logged once).
    logged_token: Option<i64>,
}

impl SupervisorCore {
    pub fn new(
        instance_id: String,
        expiry: ExpiryJob,
        reconciler: Reconciler,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        let sweep = SweepJob::new(reconciler.stock.clone(), settings.clone(), metrics.clone());
        SupervisorCore {
            instance_id,
            expiry,
            reconciler,
            sweep,
            settings,
            metrics,
            next_expiry: None,
            next_reconcile: None,
            next_sweep: None,
            leadership: Leadership::default(),
            logged_token: None,
        }
    }

    /// Records a renewal's answer, logs a change of leadership and sets the gauge.
    fn renewed(&mut self, token: Option<i64>, sent_at_ms: i64) {
        self.leadership
            .renewed(token, sent_at_ms, self.settings.supervisor.lease_ms);
        if token != self.logged_token {
            tracing::info!(
                instance = %self.instance_id,
                leader = token.is_some(),
                ?token,
                "supervisor leadership changed"
            );
            self.logged_token = token;
        }
        self.metrics.leader.set(i64::from(token.is_some()));
    }

    /// When the expiry job runs next after `now`.
    fn next_expiry_after(&self) -> Instant {
        let timeout = &self.settings.reservation.timeout;
        if timeout.interval_ms > 0 {
            return Instant::now() + Duration::from_millis(timeout.interval_ms);
        }
        // A schedule with no next time (a date in the past) waits a minute and looks again.
        let wait = timeout.cron.until_next().unwrap_or(Duration::from_secs(60));
        Instant::now() + wait
    }
}

/// What one tick should do, decided before the async work starts.
struct TickPlan {
    run_expiry: bool,
    run_reconcile: bool,
    run_sweep: bool,
}

pub struct SupervisorActor {
    core: SupervisorCore,
    busy: bool,
    renewing: bool,
}

/// Takes or renews the lease; None when another instance holds it or Redis did not answer.
/// A new lease (a token other than `known`) raises every group's fence to its token before
/// it counts, so that no write of an earlier leader lands after this one starts its jobs.
async fn renew_lease(
    redis: RedisStore,
    owner: String,
    lease_ms: u64,
    known: i64,
) -> (Option<i64>, i64) {
    // A renewal delayed (sleep) or lost (error): the lease may lapse and a follower lead.
    if crate::fault::point("lease.renew").await.is_err() {
        return (None, now_ms());
    }
    let sent_at_ms = now_ms();
    let token = match redis.lease(&owner, lease_ms, false).await {
        Ok(Some(token)) if token != known => match redis.raise_fences(token).await {
            Ok(true) => Some(token),
            Ok(false) => {
                tracing::warn!(token, "a newer supervisor lease was seen: not leading");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "fences not raised; not leading yet");
                None
            }
        },
        Ok(token) => token,
        Err(e) => {
            tracing::warn!(error = %e, "supervisor lease not renewed");
            None
        }
    };
    (token, sent_at_ms)
}

impl SupervisorActor {
    pub fn new(core: SupervisorCore) -> Self {
        SupervisorActor {
            core,
            busy: false,
            renewing: false,
        }
    }

    /// Renews the lease on its own timer, whether or not a job is running: a job longer
    /// than the lease must not lose it part-way (and if it is lost, the job sees it).
    fn renew(&mut self, ctx: &mut Context<Self>) {
        if self.renewing {
            return;
        }
        self.renewing = true;
        let redis = self.core.reconciler.stock.redis().clone();
        let owner = self.core.instance_id.clone();
        let lease_ms = self.core.settings.supervisor.lease_ms;
        let known = self.core.leadership.last_token();
        ctx.spawn(
            renew_lease(redis, owner, lease_ms, known)
                .into_actor(self)
                .map(|(token, sent_at_ms), act, _ctx| {
                    act.renewing = false;
                    act.core.renewed(token, sent_at_ms);
                }),
        );
    }

    fn plan(&mut self) -> TickPlan {
        let now = Instant::now();
        let settings = &self.core.settings;
        let run_expiry =
            settings.reservation.timeout.enabled && self.core.next_expiry.is_none_or(|t| t <= now);
        if run_expiry {
            self.core.next_expiry = Some(self.core.next_expiry_after());
        }
        let run_reconcile =
            settings.reconcile.enabled && self.core.next_reconcile.is_some_and(|t| t <= now);
        if run_reconcile || self.core.next_reconcile.is_none() {
            self.core.next_reconcile =
                Some(now + Duration::from_millis(settings.reconcile.interval_ms));
        }
        let sweep_every = settings.supervisor.sweep_interval_ms;
        let run_sweep = sweep_every > 0 && self.core.next_sweep.is_some_and(|t| t <= now);
        if run_sweep || self.core.next_sweep.is_none() {
            self.core.next_sweep = Some(now + Duration::from_millis(sweep_every));
        }
        TickPlan {
            run_expiry,
            run_reconcile,
            run_sweep,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let redis = self.core.reconciler.stock.redis().clone();
        let owner = self.core.instance_id.clone();
        let lease_ms = self.core.settings.supervisor.lease_ms;
        let expiry = self.core.expiry.clone();
        let reconciler = self.core.reconciler.clone();
        let sweep = self.core.sweep.clone();
        let repair = self.core.settings.reconcile.repair;
        let plan = self.plan();
        let leadership = self.core.leadership.clone();
        ctx.spawn(
            async move {
                // The timer keeps a lease; a tick that finds none tries to take it before
                // deciding (at start-up, or after losing it).
                let (token, sent_at_ms) = match leadership.current() {
                    Some(token) => (Some(token), None),
                    None => {
                        let known = leadership.last_token();
                        let (token, sent_at_ms) = renew_lease(redis, owner, lease_ms, known).await;
                        leadership.renewed(token, sent_at_ms, lease_ms);
                        (token, Some(sent_at_ms))
                    }
                };
                let mut expiry_behind = false;
                if let Some(token) = token {
                    let guard = LeaseGuard { leadership, token };
                    if let Err(e) = reconciler.rebuild_if_lost(guard.token).await {
                        tracing::error!(error = %e, "redis rebuild failed");
                    }
                    if plan.run_expiry && guard.holds() {
                        match expiry.run_as_leader(&guard).await {
                            Ok(r) if r.lease_lost => {
                                tracing::warn!(
                                    ?r,
                                    "expiry run stopped: the supervisor lease was lost"
                                )
                            }
                            Ok(r) if r.steps > 0 => {
                                expiry_behind = r.budget_spent;
                                tracing::info!(?r, "expiry run")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "expiry run failed"),
                        }
                    }
                    if guard.holds() {
                        match sweep.resolve_once().await {
                            Ok(r) if r != ResolveReport::default() => {
                                tracing::warn!(?r, "orders across slot groups resolved")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "resolving orders failed"),
                        }
                    }
                    if plan.run_sweep && guard.holds() {
                        match sweep.run_once(Some(&guard)).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(orders = n, "sweep forgot settled orders"),
                            Err(e) => tracing::warn!(error = %e, "sweep failed"),
                        }
                    }
                    if plan.run_reconcile && guard.holds() {
                        match reconciler
                            .run_guarded(None, None, repair, false, "schedule", Some(&guard))
                            .await
                        {
                            Ok(r) if r.lease_lost => tracing::warn!(
                                checked = r.positions_checked,
                                "reconciliation stopped: the supervisor lease was lost"
                            ),
                            Ok(r) if !r.differences.is_empty() => tracing::warn!(
                                differences = r.differences.len(),
                                "reconciliation found differences"
                            ),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
                        }
                    }
                }
                (token, sent_at_ms, expiry_behind)
            }
            .into_actor(self)
            .map(move |(token, sent_at_ms, expiry_behind), act, ctx| {
                if expiry_behind {
                    // Holds are still due: scan again right away.
                    act.core.next_expiry = None;
                    ctx.run_later(Duration::ZERO, |act, ctx| act.tick(ctx));
                }
                if let Some(sent_at_ms) = sent_at_ms {
                    act.core.renewed(token, sent_at_ms);
                }
                act.busy = false;
            }),
        );
    }
}

impl Actor for SupervisorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let tick = Duration::from_millis(self.core.settings.supervisor.tick_ms);
        self.tick(ctx);
        ctx.run_interval(tick, |act, ctx| act.tick(ctx));
        // Three renewals per lease: two can fail before it runs out.
        let renew_every =
            Duration::from_millis((self.core.settings.supervisor.lease_ms / 3).max(50));
        ctx.run_interval(renew_every, |act, ctx| act.renew(ctx));
    }
}

/// Gives up the lease (shutdown), so another instance takes over at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopSupervisor;

impl Handler<StopSupervisor> for SupervisorActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: StopSupervisor, ctx: &mut Self::Context) -> Self::Result {
        let redis = self.core.reconciler.stock.redis().clone();
        let owner = self.core.instance_id.clone();
        let lease_ms = self.core.settings.supervisor.lease_ms;
        self.core.leadership.lost();
        self.core.metrics.leader.set(0);
        ctx.stop();
        Box::pin(async move {
            let _ = redis.lease(&owner, lease_ms, true).await;
        })
    }
}

/// Whether this instance leads, and its fencing token.
#[derive(Message)]
#[rtype(result = "Option<i64>")]
pub struct LeaderToken;

impl Handler<LeaderToken> for SupervisorActor {
    type Result = Option<i64>;

    fn handle(&mut self, _msg: LeaderToken, _ctx: &mut Self::Context) -> Self::Result {
        self.core.leadership.current()
    }
}
