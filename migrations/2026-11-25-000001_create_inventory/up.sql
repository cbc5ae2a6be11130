-- Stock per (sku, warehouse). `version` follows the Redis stock hash's `seq`: the
-- persistence actor only ever moves a row to a higher version (CAS), so replaying journal
-- entries, in any order, never applies a change twice.
CREATE TABLE t_inventory (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    sku_id        BIGINT       NOT NULL,
    warehouse_id  BIGINT       NOT NULL,
    available_qty INT          NOT NULL DEFAULT 0,
    reserved_qty  INT          NOT NULL DEFAULT 0,
    version       BIGINT       NOT NULL DEFAULT 0,
    created_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    deleted       TINYINT      NOT NULL DEFAULT 0,
    PRIMARY KEY (id),
    UNIQUE KEY uk_sku_warehouse (sku_id, warehouse_id),
    KEY idx_warehouse (warehouse_id),
    CONSTRAINT ck_inventory_available_nonneg CHECK (available_qty >= 0),
    CONSTRAINT ck_inventory_reserved_nonneg CHECK (reserved_qty >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- One row per order line. `version` is the line's rank (1 RESERVED, 2 CONFIRMED/RELEASED):
-- rows only move forward.
CREATE TABLE t_inventory_reservation (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    order_no      VARCHAR(64)  NOT NULL,
    sku_id        BIGINT       NOT NULL,
    warehouse_id  BIGINT       NOT NULL,
    qty           INT          NOT NULL,
    status        VARCHAR(20)  NOT NULL,
    expire_at     DATETIME(3)  NOT NULL,
    version       INT          NOT NULL DEFAULT 0,
    release_reason VARCHAR(50) NULL,
    trace_id      VARCHAR(64)  NULL,
    created_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY uk_order_sku_warehouse (order_no, sku_id, warehouse_id),
    -- The expiry scan: RESERVED rows by expire_at.
    KEY idx_status_expire (status, expire_at),
    KEY idx_sku_warehouse_status (sku_id, warehouse_id, status),
    CONSTRAINT ck_reservation_qty_positive CHECK (qty > 0),
    CONSTRAINT ck_reservation_status CHECK (status IN ('RESERVED', 'CONFIRMED', 'RELEASED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The stock ledger: every change of available or reserved, with the values after it.
-- txn_id is derived from the journal entry, so a replayed entry inserts nothing new.
CREATE TABLE t_inventory_txn (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    txn_id          VARCHAR(64)  NOT NULL,
    order_no        VARCHAR(64)  NULL,
    sku_id          BIGINT       NOT NULL,
    warehouse_id    BIGINT       NOT NULL,
    delta_available INT          NOT NULL,
    delta_reserved  INT          NOT NULL,
    available_after INT          NOT NULL,
    reserved_after  INT          NOT NULL,
    reason          VARCHAR(50)  NOT NULL,
    trace_id        VARCHAR(64)  NULL,
    remark          VARCHAR(255) NULL,
    created_at      DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY uk_txn_id (txn_id),
    KEY idx_sku_warehouse (sku_id, warehouse_id, id),
    KEY idx_order_no (order_no),
    CONSTRAINT ck_txn_available_after_nonneg CHECK (available_after >= 0),
    CONSTRAINT ck_txn_reserved_after_nonneg CHECK (reserved_after >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Idempotency layer 1: one row per (event, consumer group).
CREATE TABLE t_mq_consume_log (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    event_id        VARCHAR(64)  NOT NULL,
    consumer_group  VARCHAR(128) NOT NULL,
    topic           VARCHAR(128) NOT NULL,
    tag             VARCHAR(64)  NULL,
    business_key    VARCHAR(64)  NULL,
    status          VARCHAR(20)  NOT NULL,
    result          TEXT         NULL,
    cost_ms         INT          NULL,
    created_at      DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at      DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY uk_event_group (event_id, consumer_group),
    KEY idx_business_key (business_key),
    CONSTRAINT ck_consume_status CHECK (status IN ('PROCESSING', 'SUCCESS', 'FAILED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
