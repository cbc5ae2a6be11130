-- The console's pages read newest-first and soonest-first, with a LIMIT:
-- a SKU's ledger across warehouses (`/inventory/ledger?skuId=`) walks (sku_id, id)
-- backwards instead of sorting the SKU's whole history, and one SKU's holds
-- (`/inventory/holds?skuId=`) walk (status, sku_id, expire_at).
CREATE INDEX idx_txn_sku_id ON t_inventory_txn (sku_id, id);
CREATE INDEX idx_reservation_status_sku_expire ON t_inventory_reservation (status, sku_id, expire_at);
