DROP TABLE t_warehouse;
