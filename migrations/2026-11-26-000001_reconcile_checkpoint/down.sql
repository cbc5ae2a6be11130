ALTER TABLE t_inventory_reservation
    DROP KEY idx_sku_warehouse_expire,
    DROP KEY idx_sku_warehouse_updated,
    DROP KEY idx_updated_at;
DROP TABLE IF EXISTS t_reconcile_watermark;
DROP TABLE IF EXISTS t_reconcile_checkpoint;
