DROP TABLE IF EXISTS t_mq_consume_log;
DROP TABLE IF EXISTS t_inventory_txn;
DROP TABLE IF EXISTS t_inventory_reservation;
DROP TABLE IF EXISTS t_inventory;
