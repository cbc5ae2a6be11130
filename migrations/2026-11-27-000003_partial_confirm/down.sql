ALTER TABLE t_inventory_reservation
    DROP CONSTRAINT ck_reservation_confirmed_qty,
    DROP COLUMN confirmed_qty;
