DROP TABLE t_stock_threshold;
