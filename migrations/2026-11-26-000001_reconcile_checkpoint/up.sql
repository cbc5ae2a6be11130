-- Reconciliation in bounded time (docs/reliability.md, "Reconciliation"): what the ledger
-- and the lines said per position up to a watermark, so that a run reads only the rows
-- written or changed after it.
--
-- on_hand: the sum of the stock-changing ledger rows (ADJUST, INBOUND, OUTBOUND,
-- REFUND_RESTORE) with id <= t_reconcile_watermark.ledger_id.
-- reserved_qty / confirmed_qty: the lines created at or before lines_until, each in the
-- state it had then: its status if it has not changed since (updated_at <= lines_until),
-- else RESERVED (a line moves at most once, from RESERVED to CONFIRMED or RELEASED).
CREATE TABLE t_reconcile_checkpoint (
    sku_id        BIGINT       NOT NULL,
    warehouse_id  BIGINT       NOT NULL,
    on_hand       BIGINT       NOT NULL DEFAULT 0,
    reserved_qty  BIGINT       NOT NULL DEFAULT 0,
    confirmed_qty BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (sku_id, warehouse_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- One row (id 1): how far the checkpoints reach. Both watermarks trail the clock by
-- reconcile.fold_margin_ms, so every row they cover had committed when it was folded.
CREATE TABLE t_reconcile_watermark (
    id          TINYINT      NOT NULL,
    ledger_id   BIGINT       NOT NULL DEFAULT 0,
    lines_until DATETIME(3)  NOT NULL DEFAULT '1970-01-01 00:00:00.000',
    folded_at   DATETIME(3)  NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

INSERT INTO t_reconcile_watermark (id) VALUES (1);

-- The lines changed since a watermark: all of them (the fold), and per position (a run);
-- the lines of a position whose Redis markers should still exist (a run's marker check).
ALTER TABLE t_inventory_reservation
    ADD KEY idx_updated_at (updated_at),
    ADD KEY idx_sku_warehouse_updated (sku_id, warehouse_id, updated_at),
    ADD KEY idx_sku_warehouse_expire (sku_id, warehouse_id, expire_at);
