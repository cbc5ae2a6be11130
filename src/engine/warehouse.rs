//! Warehouses: the operator's register of where stock can ship from, which routing chooses
//! among (issue "routing"). Stock of a warehouse id with no row here is still reserved as
//! before when a request names it; only routing needs the register.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::routing::Site;
use crate::engine::EngineError;
use crate::store::db::{self, DbError, DbPool};
use crate::store::models::{Warehouse, WarehouseFields};

/// Highest priority value (lower is preferred).
pub const MAX_PRIORITY: i64 = 1_000_000;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarehouseView {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub region: Option<String>,
    /// Lower is preferred by the PRIORITY strategy.
    pub priority: i64,
    /// A disabled warehouse is never routed to.
    pub enabled: bool,
    /// True when the same warehouse was created before (a repeat changes nothing).
    pub existed: bool,
}

impl WarehouseView {
    fn of(w: Warehouse, existed: bool) -> Self {
        WarehouseView {
            id: w.id,
            code: w.code,
            name: w.name,
            region: w.region,
            priority: i64::from(w.priority),
            enabled: w.enabled != 0,
            existed,
        }
    }
}

/// `POST /warehouses`: every field but `region`, `priority` (0) and `enabled` (true) is
/// required.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewWarehouse {
    /// The warehouse id used in stock positions (ids already in use are accepted).
    pub id: i64,
    /// 1-32 of [A-Za-z0-9_-], unique.
    pub code: String,
    /// 1-128 characters.
    pub name: String,
    /// 1-32 of [A-Za-z0-9_-]; the PRIORITY strategy may keep to one region.
    pub region: Option<String>,
    pub priority: Option<i64>,
    pub enabled: Option<bool>,
}

/// `PUT /warehouses/{id}`: the fields to change; absent ones keep their value (`region`:
/// null clears it).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WarehouseChange {
    pub code: Option<String>,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::domain::present")]
    #[schema(value_type = Option<String>)]
    pub region: Option<Option<String>>,
    pub priority: Option<i64>,
    pub enabled: Option<bool>,
}

pub(crate) fn word(field: &str, value: &str, max: usize) -> Result<(), EngineError> {
    if value.is_empty()
        || value.len() > max
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(EngineError::Invalid(format!(
            "{field} must be 1-{max} of [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

/// Checks every field; an error names the first bad one.
fn check(id: i64, fields: &WarehouseFields) -> Result<(), EngineError> {
    if id < 1 {
        return Err(EngineError::Invalid(format!("id must be >= 1, got {id}")));
    }
    word("code", &fields.code, 32)?;
    let name_len = fields.name.chars().count();
    if fields.name.trim().is_empty() || name_len > 128 || fields.name.chars().any(char::is_control)
    {
        return Err(EngineError::Invalid(
            "name must be 1-128 characters, not blank, without control characters".into(),
        ));
    }
    if let Some(region) = &fields.region {
        word("region", region, 32)?;
    }
    Ok(())
}

fn priority(value: Option<i64>, current: i32) -> Result<i32, EngineError> {
    match value {
        None => Ok(current),
        Some(p) if (0..=MAX_PRIORITY).contains(&p) => {
            i32::try_from(p).map_err(|_| EngineError::Invalid("priority too large".into()))
        }
        Some(p) => Err(EngineError::Invalid(format!(
            "priority must be 0 to {MAX_PRIORITY}, got {p}"
        ))),
    }
}

/// The enabled warehouses as routing last read them, and when; and how many changes this
/// instance made (a read that a change overtook is not kept).
type SiteCache = (u64, Option<(Instant, Arc<Vec<Site>>)>);

#[derive(Clone)]
pub struct WarehouseService {
    pool: DbPool,
    /// Routing reads the register from here; this instance's changes clear it at once,
    /// other instances' changes show after `refresh`.
    sites: Arc<Mutex<SiteCache>>,
    refresh: Duration,
}

impl WarehouseService {
    pub fn new(pool: DbPool, refresh: Duration) -> Self {
        WarehouseService {
            pool,
            sites: Arc::new(Mutex::new((0, None))),
            refresh,
        }
    }

    /// The enabled warehouses (routing's candidates), at most `refresh` old.
    pub async fn enabled_sites(&self) -> Result<Arc<Vec<Site>>, EngineError> {
        let mut changes_before = 0;
        if let Ok(cached) = self.sites.lock() {
            changes_before = cached.0;
            if let Some((read_at, sites)) = cached.1.as_ref() {
                if read_at.elapsed() < self.refresh {
                    return Ok(sites.clone());
                }
            }
        }
        let read_at = Instant::now();
        let all = {
            let mut conn = db::connection(&self.pool).await?;
            Warehouse::all(&mut conn).await.map_err(DbError::from)?
        };
        let sites: Arc<Vec<Site>> = Arc::new(
            all.into_iter()
                .filter(|w| w.enabled != 0)
                .map(|w| Site {
                    warehouse_id: w.id,
                    priority: w.priority,
                    region: w.region,
                })
                .collect(),
        );
        if let Ok(mut cached) = self.sites.lock() {
            if cached.0 == changes_before {
                cached.1 = Some((read_at, sites.clone()));
            }
        }
        Ok(sites)
    }

    fn forget_sites(&self) {
        if let Ok(mut cached) = self.sites.lock() {
            cached.0 += 1;
            cached.1 = None;
        }
    }

    pub async fn list(&self) -> Result<Vec<WarehouseView>, EngineError> {
        let mut conn = db::connection(&self.pool).await?;
        let all = Warehouse::all(&mut conn).await.map_err(DbError::from)?;
        Ok(all
            .into_iter()
            .map(|w| WarehouseView::of(w, false))
            .collect())
    }

    pub async fn get(&self, id: i64) -> Result<WarehouseView, EngineError> {
        let mut conn = db::connection(&self.pool).await?;
        match Warehouse::find(&mut conn, id)
            .await
            .map_err(DbError::from)?
        {
            Some(w) => Ok(WarehouseView::of(w, false)),
            None => Err(EngineError::WarehouseNotFound(id)),
        }
    }

    /// Creates a warehouse. The same one again answers `existed`; another one under a taken
    /// id or code is a conflict.
    pub async fn create(&self, new: NewWarehouse) -> Result<WarehouseView, EngineError> {
        let fields = WarehouseFields {
            code: new.code,
            name: new.name,
            region: new.region,
            priority: priority(new.priority, 0)?,
            enabled: i8::from(new.enabled.unwrap_or(true)),
        };
        check(new.id, &fields)?;
        let mut conn = db::connection(&self.pool).await?;
        let same = |w: &Warehouse| {
            w.id == new.id
                && w.code == fields.code
                && w.name == fields.name
                && w.region == fields.region
                && w.priority == fields.priority
                && w.enabled == fields.enabled
        };
        let by_id = Warehouse::find(&mut conn, new.id)
            .await
            .map_err(DbError::from)?;
        let existing = match by_id {
            Some(w) => Some(w),
            None => Warehouse::find_by_code(&mut conn, &fields.code)
                .await
                .map_err(DbError::from)?,
        };
        if let Some(existing) = existing {
            if same(&existing) {
                return Ok(WarehouseView::of(existing, true));
            }
            return Err(EngineError::WarehouseConflict(format!(
                "warehouse {} ({}) exists with other fields; change it with PUT /warehouses/{}",
                existing.id, existing.code, existing.id
            )));
        }
        match Warehouse::insert(&mut conn, new.id, &fields).await {
            Ok(()) => {}
            // Created by a concurrent request between the look-up and the insert.
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {
                return Err(EngineError::WarehouseConflict(format!(
                    "warehouse id {} or code {} was taken meanwhile",
                    new.id, fields.code
                )))
            }
            Err(e) => return Err(DbError::from(e).into()),
        }
        self.forget_sites();
        self.get(new.id).await
    }

    /// Changes the fields given; the rest keep their value.
    pub async fn update(
        &self,
        id: i64,
        change: WarehouseChange,
    ) -> Result<WarehouseView, EngineError> {
        let mut conn = db::connection(&self.pool).await?;
        let Some(current) = Warehouse::find(&mut conn, id)
            .await
            .map_err(DbError::from)?
        else {
            return Err(EngineError::WarehouseNotFound(id));
        };
        let fields = WarehouseFields {
            code: change.code.unwrap_or_else(|| current.code.clone()),
            name: change.name.unwrap_or_else(|| current.name.clone()),
            region: change.region.unwrap_or_else(|| current.region.clone()),
            priority: priority(change.priority, current.priority)?,
            enabled: change.enabled.map_or(current.enabled, i8::from),
        };
        check(id, &fields)?;
        if fields.code != current.code {
            if let Some(other) = Warehouse::find_by_code(&mut conn, &fields.code)
                .await
                .map_err(DbError::from)?
            {
                return Err(EngineError::WarehouseConflict(format!(
                    "code {} belongs to warehouse {}",
                    fields.code, other.id
                )));
            }
        }
        match Warehouse::update(&mut conn, id, &fields).await {
            Ok(_) => {}
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {
                return Err(EngineError::WarehouseConflict(format!(
                    "code {} was taken meanwhile",
                    fields.code
                )))
            }
            Err(e) => return Err(DbError::from(e).into()),
        }
        self.forget_sites();
        self.get(id).await
    }

    /// Disables a warehouse: routing never chooses it again (stock held there stays held).
    pub async fn disable(&self, id: i64) -> Result<WarehouseView, EngineError> {
        self.update(
            id,
            WarehouseChange {
                enabled: Some(false),
                ..WarehouseChange::default()
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(code: &str, name: &str, region: Option<&str>) -> WarehouseFields {
        WarehouseFields {
            code: code.into(),
            name: name.into(),
            region: region.map(Into::into),
            priority: 0,
            enabled: 1,
        }
    }

    #[test]
    fn fields_are_checked() {
        assert!(check(1, &fields("SH-1", "Shanghai 1", Some("east"))).is_ok());
        assert!(check(0, &fields("SH-1", "Shanghai 1", None)).is_err());
        assert!(check(1, &fields("", "x", None)).is_err());
        assert!(check(1, &fields("a b", "x", None)).is_err());
        assert!(check(1, &fields(&"x".repeat(33), "x", None)).is_err());
        assert!(check(1, &fields("a", " ", None)).is_err());
        assert!(check(1, &fields("a", "x\n", None)).is_err());
        assert!(check(1, &fields("a", "x", Some(""))).is_err());
        assert_eq!(priority(None, 7).ok(), Some(7));
        assert_eq!(priority(Some(3), 7).ok(), Some(3));
        assert!(priority(Some(-1), 7).is_err());
        assert!(priority(Some(MAX_PRIORITY + 1), 7).is_err());
    }
}
