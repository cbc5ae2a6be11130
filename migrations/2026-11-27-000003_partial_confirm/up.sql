-- A partial confirm sells fewer units than the line held (the rest go back to sale, ledger
-- reason RELEASE with remark PARTIAL_CONFIRM). `qty` stays the units held, so what a line
-- held never changes (reconciliation checkpoints rely on it); `confirmed_qty` is the units
-- sold once CONFIRMED. NULL (rows from before this column) means all of `qty`.
ALTER TABLE t_inventory_reservation
    ADD COLUMN confirmed_qty INT NULL,
    ADD CONSTRAINT ck_reservation_confirmed_qty
        CHECK (confirmed_qty IS NULL OR (confirmed_qty >= 0 AND confirmed_qty <= qty));
