-- Stock-level events (docs/events.md, "Stock-level events"): a position's low-stock
-- threshold. No row or NULL: none (only STOCK_OUT and STOCK_BACK are told). Clearing keeps
-- the row with NULL, so that the newest updated_at tells the persistence path that its
-- cached thresholds are stale.
CREATE TABLE t_stock_threshold (
    sku_id              BIGINT      NOT NULL,
    warehouse_id        BIGINT      NOT NULL,
    low_stock_threshold INT         NULL,
    updated_at          DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (sku_id, warehouse_id),
    KEY idx_stock_threshold_updated (updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
